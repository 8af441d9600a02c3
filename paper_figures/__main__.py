"""``python -m paper_figures``: see :func:`paper_figures._runner.main`."""

from paper_figures._runner import main

raise SystemExit(main())
