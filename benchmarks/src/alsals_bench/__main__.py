"""``python -m alsals_bench [command] [options]`` is ``alsals-bench [command] [options]``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
