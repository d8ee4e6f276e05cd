"""``python -m pagcp.train``: train or fine-tune, also under torchrun (implemented in :mod:`pagcp.cli.train`)."""

import sys

from pagcp.cli.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
