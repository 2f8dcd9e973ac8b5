"""The dnax command line (typer + rich)."""
