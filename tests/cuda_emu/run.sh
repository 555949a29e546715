#!/usr/bin/env bash
# Runs the CUDA kernels of csrc/cuda on the host emulator (no GPU) against float64 references.
# Needs g++, python3 and the CUDA headers (cuda_fp16.h, cuda_bf16.h, cuda_runtime.h).
#   tests/cuda_emu/run.sh                          every family
#   tests/cuda_emu/run.sh FAMILY [case-substring]  one family (optionally only matching cases)
#   tests/cuda_emu/run.sh --list                   the family names
#   SANITIZE=1 tests/cuda_emu/run.sh ...           AddressSanitizer + UBSan build (ASAN=1 works too):
#                                                  any out-of-bounds access by a kernel aborts
# Environment: CXX (default g++), CUDA_HOME (default /usr/local/cuda), OUT (build dir, default
# build/cuda_emu), JOBS (default 2: programs built, and each program's cases run, JOBS at a time).
#
# A family is one program, tests/cuda_emu/<family>_emu_test.cpp; run.sh and pytest
# (test_cuda_emulated.py) find it by that name. To add one (say groupnorm):
#   #include "cuda_host.h"              // CUDA builtins on the emulator
#   #include "cuda/groupnorm.cu"        // the kernel file as hostify.py rewrote it (launches)
#   #include "emu_check.h"              // poisoned Buffers, get/put, expect_close, run_cases
# then call the launchers on Buffers (odd sizes, storage offset by one element, rows longer than
# one block; lower emu::device().max_blocks / .max_grid_y to reach grid-stride or split paths),
# compare with a float64 reference, and end main with `return emu::run_cases(argc, argv, cases);`.
# guidance_emu_test.cpp is the shortest example. (attention_emu_test.cpp differs: its kernels are
# written against emulated warp primitives, FASTDIFF_ATTN_EMULATE, and geglu_emu_test.cpp calls the
# thread bodies of geglu_kernels.cuh compiled as plain C++, FASTDIFF_CUDA_EMULATE, and
# group_norm_emu_test.cpp the kernels of group_norm.cuh with the emulator's barrier, FASTDIFF_GN_EMULATE.)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cuda="${CUDA_HOME:-/usr/local/cuda}"
out="${OUT:-$root/build/cuda_emu}"

families=()
for f in "$here"/*_emu_test.cpp; do families+=("$(basename "$f" _emu_test.cpp)"); done
if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${families[@]}"
  exit 0
fi
if (( $# > 0 )); then
  [[ -f "$here/$1_emu_test.cpp" ]] || { echo "run.sh: no family '$1' (have: ${families[*]})" >&2; exit 2; }
  families=("$1")
  shift
fi

flags=(-std=c++17 -g -fno-strict-aliasing -Wall -Wextra -Wno-unknown-pragmas -Wno-class-memaccess
       -Wno-maybe-uninitialized -DFASTDIFF_ATTN_EMULATE -DFASTDIFF_CUDA_EMULATE -DFASTDIFF_GN_EMULATE
       -I "$out/hostified" -I "$root/csrc" -I "$here" -I "$cuda/include")
if [[ "${SANITIZE:-${ASAN:-0}}" != 0 ]]; then
  flags+=(-O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  suffix=_san
else
  flags+=(-O2)
  suffix=
fi
mkdir -p "$out"
# The kernel sources with their launches rewritten for the emulator (unchanged files keep their
# timestamps, so the staleness test below sees only real edits).
python3 "$here/hostify.py" "$root/csrc/cuda" "$out/hostified/cuda"

newest_dep() {  # newest mtime (seconds) of the sources every test program depends on
  find "$root/csrc" "$here" -maxdepth 2 \( -name '*.h' -o -name '*.cuh' -o -name '*.cu' -o -name '*.cpp' \) \
    -printf '%T@\n' | sort -n | tail -n 1 | cut -d. -f1
}
dep_time="$(newest_dep)"
stale() { [[ ! -x "$1" ]] || (( $(stat -c %Y "$1") < dep_time )); }

jobs="${JOBS:-2}"
emu_obj="$out/emulator$suffix.o"
if stale "$emu_obj"; then
  "${CXX:-g++}" "${flags[@]}" -c "$here/emulator.cpp" -o "$emu_obj"
  chmod +x "$emu_obj"  # marks it built for `stale`
fi

# Build the stale programs, JOBS at a time.
pids=()
for fam in "${families[@]}"; do
  bin="$out/${fam}_emu_test$suffix"
  stale "$bin" || continue
  echo "building $bin" >&2
  "${CXX:-g++}" "${flags[@]}" "$here/${fam}_emu_test.cpp" "$emu_obj" -o "$bin" &
  pids+=($!)
  if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

# Run each program as JOBS shards in parallel (cases dealt round-robin), printing them in order.
failed=0
for fam in "${families[@]}"; do
  echo "== $fam"
  pids=()
  for (( i = 0; i < jobs; i++ )); do
    # ASan: fibers switch stacks through swapcontext (annotated in emulator.cpp).
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
      "$out/${fam}_emu_test$suffix" --shard="$i/$jobs" "$@" > "$out/$fam.shard$i.log" 2>&1 &
    pids+=($!)
  done
  for (( i = 0; i < jobs; i++ )); do
    wait "${pids[$i]}" || failed=1
    grep -v "makecontext/swapcontext" "$out/$fam.shard$i.log" || true
  done
done
exit $failed
