"""``python -m tether``: the `tether` command."""

from .cli.main import main

raise SystemExit(main())
