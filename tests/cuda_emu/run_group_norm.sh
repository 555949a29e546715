#!/usr/bin/env bash
# Builds the CUDA group_norm kernels for the host emulator and runs them against float64
# (tests/cuda_emu/group_norm_emu_test.cpp). Needs g++ and the CUDA headers, no GPU.
#   tests/cuda_emu/run_group_norm.sh     (CXX, CUDA_HOME, OUT as in run.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cuda="${CUDA_HOME:-/usr/local/cuda}"
out="${OUT:-$root/build/cuda_emu}"
mkdir -p "$out"
bin="$out/group_norm_emu_test"
"${CXX:-g++}" -std=c++17 -O1 -g -Wall -Wextra -Wno-unknown-pragmas -DFASTDIFF_GN_EMULATE -I "$root/csrc" \
  -I "$root/tests/cuda_emu" -I "$cuda/include" "$root/tests/cuda_emu/emulator.cpp" \
  "$root/tests/cuda_emu/group_norm_emu_test.cpp" -o "$bin"
"$bin"
