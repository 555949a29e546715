"""Benchmark fastdiff's sampler_update kernels against eager PyTorch and diffusers' schedulers.

Same as `fastdiff bench sampler_update [options]`; run with --help for the options.
"""

import sys
from pathlib import Path

try:
    from fastdiff.bench import main
except ImportError:  # a source checkout that is not installed: use the checkout's package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fastdiff.bench import main

if __name__ == "__main__":
    sys.exit(main(["sampler_update", *sys.argv[1:]]))
