"""adaln benchmark: forward, backward, forward+backward vs eager PyTorch and torch.compile.

    python benchmarks/bench_adaln.py --save benchmarks/results/cpu      # CPU, DiT-XL shapes, 2 threads
    python benchmarks/bench_adaln.py --device cuda --save benchmarks/results/<gpu>

A thin wrapper over fastdiff.bench.adaln (see `--help`).
"""

import os
import sys

try:
    import fastdiff  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastdiff.bench.adaln import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
