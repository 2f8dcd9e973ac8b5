"""Data sources: real images split into train / heldout / val."""
