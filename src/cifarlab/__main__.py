"""Allows ``python -m cifarlab`` (and ``torchrun -m cifarlab``)."""

from cifarlab.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
