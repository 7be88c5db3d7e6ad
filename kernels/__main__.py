"""``python -m tether_kernels``: see :mod:`tether_kernels.cli`."""

import sys

from .cli import main

sys.exit(main())
