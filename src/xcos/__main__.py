"""``python -m xcos``: the ``xcos`` console script (its help and errors name ``xcos``)."""

import sys

from xcos.cli import main

sys.exit(main())
