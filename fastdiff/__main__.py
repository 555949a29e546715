"""`python -m fastdiff ...`: the same command line as the `fastdiff` console script."""

from .cli import main

raise SystemExit(main())
