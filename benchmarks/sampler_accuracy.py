"""Wrapper: `python benchmarks/sampler_accuracy.py [args]` runs `fastdiff bench samplers` (fastdiff/bench/sampler_accuracy.py)."""

import sys
from pathlib import Path

try:
    from fastdiff.bench.sampler_accuracy import main
except ImportError:  # a source checkout that is not installed: use the checkout's package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fastdiff.bench.sampler_accuracy import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
