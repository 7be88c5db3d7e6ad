"""``python -m tether.cli``: the `tether` command."""

from .main import main

raise SystemExit(main())
