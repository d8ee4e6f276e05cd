"""``python -m pagcp.data``: the demo dataset generator (same flags as ``python -m pagcp.data.demo``)."""

import sys

from pagcp.data.demo import main

sys.exit(main())
