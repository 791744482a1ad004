"""``python -m mgnet.figures``: see :mod:`mgnet.figures.cli`."""

import sys

from .cli import main

sys.exit(main())
