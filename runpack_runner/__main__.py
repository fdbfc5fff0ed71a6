"""``python -m runpack_runner``: the same as ``runpack-runner``."""

import sys

from runpack_runner.cli import main

sys.exit(main())
