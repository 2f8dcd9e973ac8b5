"""Retrainers: train the selected network from scratch and export it."""
