"""Selectors: pick the best network under budgets."""
