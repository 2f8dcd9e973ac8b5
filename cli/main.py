"""Entry point of the ``dnax`` console script (commands defined in :mod:`dnax.cli.app`)."""

from __future__ import annotations


def main() -> None:
    from dnax.cli.app import app

    app()
