"""``python -m dnax``: the CLI (also the entry torchrun starts: ``torchrun -m dnax run ...``)."""

from dnax.cli.main import main

if __name__ == "__main__":
    main()
