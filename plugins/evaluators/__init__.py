"""Evaluators: score every candidate of every block on held-out images."""
