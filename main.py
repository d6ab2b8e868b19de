"""Classic entry point: ``python main.py -tc config.json [--mode test -p weights.pth]``."""

import sys

from xcos.cli import main

if __name__ == "__main__":
    sys.exit(main())
