#!/usr/bin/env python3
"""Attention benchmark: `python benchmarks/bench_attention.py [options]` runs `python -m fastdiff.bench.attention`.

See fastdiff/bench/attention.py for what is measured; `--help` lists the options.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fastdiff.bench.attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
