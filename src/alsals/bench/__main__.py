"""``python -m alsals.bench [options]`` is ``alsals bench [options]``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
