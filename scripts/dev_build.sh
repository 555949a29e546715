#!/usr/bin/env bash
# Developer build without pip: configure + build fastdiff._C in build/dev and copy it into
# fastdiff/, so `python -m pytest` from this checkout (or any git worktree of it) uses this tree's
# kernels. Users install with `pip install --no-build-isolation .` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$py")" \
  -DFASTDIFF_CUDA="${FASTDIFF_CUDA:-AUTO}" -DFASTDIFF_CUDA_ARCHS="${FASTDIFF_CUDA_ARCHS:-80;90}" >/dev/null
cmake --build build/dev -j "${JOBS:-2}"
cp build/dev/_C*.so fastdiff/
echo "built $(ls fastdiff/_C*.so)"
