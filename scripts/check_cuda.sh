#!/usr/bin/env bash
# Compile every torch-free CUDA kernel file (csrc/cuda/*.cu) with nvcc for sm_80 and sm_90, warnings
# as errors. Needs nvcc only (no GPU, no torch): CI's check that the kernels build.
#   scripts/check_cuda.sh            # from any directory
#   NVCC=/path/to/nvcc PTXAS_VERBOSE=1 scripts/check_cuda.sh   # also print registers/spills per kernel
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [[ ! -x "$nvcc" ]]; then
  echo "check_cuda: nvcc not found (set NVCC or put it on PATH)" >&2
  exit 2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

flags=(-std=c++17 -O3 -I "$root/csrc"
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       -Werror all-warnings -Xcompiler -Wall,-Wextra)
[[ "${PTXAS_VERBOSE:-0}" != 0 ]] && flags+=(-Xptxas -v)

shopt -s nullglob
files=("$root"/csrc/cuda/*.cu)
if (( ${#files[@]} == 0 )); then
  echo "check_cuda: no .cu files under $root/csrc/cuda" >&2
  exit 1
fi
"$nvcc" --version | tail -n 1
failed=0
for f in "${files[@]}"; do
  start=$(date +%s%N)
  if "$nvcc" "${flags[@]}" -c "$f" -o "$tmp/$(basename "$f").o"; then status=ok; else status=FAILED; failed=1; fi
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-28s %-6s %3d.%01d s\n' "${f#"$root"/}" "$status" $((ms / 1000)) $((ms % 1000 / 100))
done
exit $failed
