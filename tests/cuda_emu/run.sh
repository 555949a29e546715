#!/usr/bin/env bash
# Builds CUDA kernels for the host emulator and runs them against their float64 references:
# tests/cuda_emu/<family>_emu_test.cpp, with family = EMU_TEST (default attention). Needs g++ and
# the CUDA headers (cuda_fp16.h, cuda_bf16.h, cuda_runtime.h), no GPU.
#   tests/cuda_emu/run.sh [case-substring]                  the attention kernels, optimised build
#   EMU_TEST=geglu tests/cuda_emu/run.sh [case-substring]   the geglu kernels
#   ASAN=1 tests/cuda_emu/run.sh [case-substring]           AddressSanitizer build (any out-of-bounds
#                                                           global access by a kernel aborts)
# Environment: CXX (default g++), CUDA_HOME (default /usr/local/cuda), OUT (build dir, default
# build/cuda_emu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cuda="${CUDA_HOME:-/usr/local/cuda}"
out="${OUT:-$root/build/cuda_emu}"
family="${EMU_TEST:-attention}"
mkdir -p "$out"
# FASTDIFF_ATTN_EMULATE: the attention kernels' switch; FASTDIFF_CUDA_EMULATE: the other families'.
flags=(-std=c++17 -g -fno-strict-aliasing -Wall -Wextra -Wno-unknown-pragmas -DFASTDIFF_ATTN_EMULATE
       -DFASTDIFF_CUDA_EMULATE -I "$root/csrc" -I "$root/tests/cuda_emu" -I "$cuda/include")
if [[ "${ASAN:-0}" != 0 ]]; then
  flags+=(-O1 -fsanitize=address -fno-omit-frame-pointer)
  bin="$out/${family}_emu_test_asan"
else
  flags+=(-O2)
  bin="$out/${family}_emu_test"
fi
srcs=("$root/tests/cuda_emu/emulator.cpp" "$root/tests/cuda_emu/${family}_emu_test.cpp")
deps=("${srcs[@]}" "$root/tests/cuda_emu/emulator.h" "$root"/csrc/cuda/*.cuh "$root"/csrc/cuda/*.h "$root"/csrc/*.h)
stale=0
[[ -x "$bin" ]] || stale=1
for f in "${deps[@]}"; do [[ "$f" -nt "$bin" ]] && stale=1; done
if (( stale )); then
  echo "building $bin" >&2
  "${CXX:-g++}" "${flags[@]}" "${srcs[@]}" -o "$bin"
fi
# ASan: fibers switch stacks through swapcontext (annotated in emulator.cpp).
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" "$bin" "$@"
