#!/usr/bin/env bash
# Builds the CUDA geglu kernels (csrc/cuda/geglu_kernels.cuh) for the host emulator and runs them
# against the float64 reference (tests/cuda_emu/geglu_emu_test.cpp). Needs g++ and the CUDA headers,
# no GPU.   tests/cuda_emu/run_geglu.sh [case-substring]   (ASAN=1: AddressSanitizer build)
# Environment: CXX (default g++), CUDA_HOME (default /usr/local/cuda), OUT (build dir, default build/cuda_emu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cuda="${CUDA_HOME:-/usr/local/cuda}"
out="${OUT:-$root/build/cuda_emu}"
mkdir -p "$out"
flags=(-std=c++17 -g -fno-strict-aliasing -Wall -Wextra -Wno-unknown-pragmas -DFASTDIFF_CUDA_EMULATE
       -I "$root/csrc" -I "$root/tests/cuda_emu" -I "$cuda/include")
if [[ "${ASAN:-0}" != 0 ]]; then
  flags+=(-O1 -fsanitize=address -fno-omit-frame-pointer)
  bin="$out/geglu_emu_test_asan"
else
  flags+=(-O2)
  bin="$out/geglu_emu_test"
fi
srcs=("$root/tests/cuda_emu/emulator.cpp" "$root/tests/cuda_emu/geglu_emu_test.cpp")
deps=("${srcs[@]}" "$root/tests/cuda_emu/emulator.h" "$root/csrc/cuda/geglu_kernels.cuh" "$root/csrc/geglu_args.h"
      "$root/csrc/dtype.h")
stale=0
[[ -x "$bin" ]] || stale=1
for f in "${deps[@]}"; do [[ "$f" -nt "$bin" ]] && stale=1; done
if (( stale )); then
  echo "building $bin" >&2
  "${CXX:-g++}" "${flags[@]}" "${srcs[@]}" -o "$bin"
fi
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" "$bin" "$@"
