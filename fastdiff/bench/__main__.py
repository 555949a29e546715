"""`python -m fastdiff.bench ...`: the same as `fastdiff bench ...`."""

import sys

from . import main

sys.exit(main())
