"""``python -m qcinode``."""

from qcinode.cli import main

raise SystemExit(main())
