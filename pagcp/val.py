"""``python -m pagcp.val``: validate a model on a dataset split (implemented in :mod:`pagcp.cli.val`)."""

import sys

from pagcp.cli.val import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
