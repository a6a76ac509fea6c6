"""``python -m kannuki``: the command line (see :mod:`kannuki.cli`)."""

import sys

from kannuki.cli import main

sys.exit(main())
