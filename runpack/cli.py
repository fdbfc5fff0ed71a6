"""The ``runpack`` console script (``python -m runpack.cli`` too); the commands are in
:mod:`runpack.commands`."""

from __future__ import annotations

import sys

from runpack.commands import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
