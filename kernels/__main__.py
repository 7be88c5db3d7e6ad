"""``python -m kernels``: see :mod:`kernels.cli`."""

import sys

from .cli import main

sys.exit(main())
