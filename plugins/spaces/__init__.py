"""Search spaces: per block, cells of layers, each layer choosing among ops."""
