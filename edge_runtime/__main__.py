"""Entry point for ``python -m edge_runtime``."""

from edge_runtime.cli import main

raise SystemExit(main())
