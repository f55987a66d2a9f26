"""``python -m serving --model PATH_OR_URI``: the server without the ``wtag`` CLI (tests, containers)."""
from __future__ import annotations

import sys

from serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
