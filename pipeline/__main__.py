"""``python -m pipeline`` is the ``pipeline`` console script."""

from pipeline.cli import main

raise SystemExit(main())
