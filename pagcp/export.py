"""``python -m pagcp.export``: export a model to ONNX (implemented in :mod:`pagcp.cli.export`)."""

import sys

from pagcp.cli.export import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
