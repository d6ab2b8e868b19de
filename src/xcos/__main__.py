import sys

from xcos.cli import main

sys.exit(main())
