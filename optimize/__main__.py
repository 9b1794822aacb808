"""``python -m optimize``: see optimize.cli."""

from optimize.cli import main

raise SystemExit(main())
