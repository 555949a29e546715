#!/usr/bin/env bash
# One command on a GPU machine: build with the CUDA kernels, run every test (the backend fixture then
# includes cuda and triton on CUDA tensors), the GPU-only tests, compute-sanitizer on a small subset,
# and the benchmarks when fastdiff.bench exists. Every step logs into OUTDIR; summary.txt lists each
# step's status and time. Keeps going after a failure; exits non-zero if any step failed.
#   scripts/gpu_check.sh OUTDIR
# Environment: PYTHON (default python3), FASTDIFF_CUDA_ARCHS (default: the GPUs' compute capability
# from nvidia-smi, else 90), JOBS (build parallelism, default: all cores).
set -u
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
out="$(cd "$1" && pwd)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
py="${PYTHON:-python3}"
export PYTHON="$py"
: >"$out/summary.txt"
failed=()

# run_step NAME CMD...: runs CMD with stdout+stderr into OUTDIR/NAME.log, records status and time.
run_step() {
  local name="$1"
  shift
  local log="$out/$name.log" start end rc cmd="$*"
  cmd="${cmd//$'\n'/ }"
  ((${#cmd} > 90)) && cmd="${cmd:0:87}..."
  echo "== $name: $cmd"
  start=$(date +%s)
  { echo "\$ $*"; echo; } >"$log"
  "$@" >>"$log" 2>&1
  rc=$?
  end=$(date +%s)
  printf '%-18s %-6s %5ds   %s\n' "$name" "$([[ $rc -eq 0 ]] && echo ok || echo FAIL:$rc)" $((end - start)) "$cmd" |
    tee -a "$out/summary.txt"
  if [[ $rc -ne 0 ]]; then
    failed+=("$name")
    tail -n 25 "$log" | sed 's/^/    | /'
  fi
  return 0
}

# ---- machine and checkout ----------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "branch: $(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
  echo "dirty files:"
  git status --short 2>/dev/null | sed 's/^/  /'
} >"$out/checkout.txt"
git rev-parse HEAD >"$out/commit.txt" 2>/dev/null
run_step nvidia-smi nvidia-smi
nvidia-smi -q >"$out/nvidia-smi-q.log" 2>&1
run_step versions "$py" -c "
import platform, torch
print('python', platform.python_version())
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton missing')
assert torch.cuda.is_available(), 'torch sees no CUDA device'
"
command -v nvcc >/dev/null && nvcc --version >>"$out/versions.log" 2>&1

# ---- build -------------------------------------------------------------------------------------
archs="${FASTDIFF_CUDA_ARCHS:-}"
if [[ -z "$archs" ]]; then
  archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u | paste -sd ';' -)
  [[ -z "$archs" ]] && archs=90
fi
echo "CUDA archs: $archs" | tee -a "$out/summary.txt"
run_step check-cuda scripts/check_cuda.sh
run_step build env FASTDIFF_CUDA=1 FASTDIFF_CUDA_ARCHS="$archs" JOBS="${JOBS:-$(nproc)}" scripts/dev_build.sh
run_step info "$py" -c "
import json, fastdiff
i = fastdiff.info(); print(json.dumps(i, indent=2))
assert fastdiff._backend.cuda_compiled(), 'fastdiff._C has no CUDA kernels'
"

# ---- tests -------------------------------------------------------------------------------------
run_step pytest-all "$py" -m pytest -q -ra --junitxml "$out/pytest-all.xml"
run_step pytest-gpu "$py" -m pytest -m gpu -q -ra --junitxml "$out/pytest-gpu.xml"

# ---- compute-sanitizer on a small subset -------------------------------------------------------
sanitizer="$(command -v compute-sanitizer || true)"
[[ -z "$sanitizer" && -x /usr/local/cuda/bin/compute-sanitizer ]] && sanitizer=/usr/local/cuda/bin/compute-sanitizer
if [[ -n "$sanitizer" ]]; then
  # Without the caching allocator every tensor is its own allocation, so reads past its end are seen
  # (the CUDA-graph test needs the caching allocator: cudaMalloc is illegal during capture).
  subset=(tests/ops/test_cuda_specific.py -k "misaligned or divide or mixed_width or rescale_factor")
  run_step memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
    --target-processes all "$py" -m pytest -q -p no:cacheprovider "${subset[@]}"
  run_step racecheck "$sanitizer" --tool racecheck --error-exitcode 1 --target-processes all \
    "$py" -m pytest -q -p no:cacheprovider tests/ops/test_cuda_specific.py -k "rescale_factor"
else
  echo "compute-sanitizer    skipped (not found)" | tee -a "$out/summary.txt"
fi

# ---- benchmarks (fastdiff/bench, when present) ---------------------------------------------------
if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('fastdiff.bench') is None)" 2>/dev/null; then
  run_step bench "$py" -m fastdiff.cli bench all --json "$out/bench.json" --md "$out/bench.md"
  # the sampling loop: diffusers vs fastdiff's eager loop vs CUDA graph replay (issue 3)
  for steps in 20 50; do
    run_step "overhead-$steps" "$py" -m fastdiff.cli bench overhead --device cuda --steps "$steps" \
      --shapes 1x4x64x64,4x4x64x64,2x4x128x128 --out "$out"
  done
  run_step bench-adaln "$py" -m fastdiff.cli bench adaln --device cuda --save "$out"
  run_step bench-attention "$py" -m fastdiff.cli bench attention --out "$out"
  run_step bench-group_norm "$py" -m fastdiff.cli bench group_norm --device cuda --save "$out"
else
  echo "bench                skipped (fastdiff.bench does not exist in this checkout)" | tee -a "$out/summary.txt"
fi

echo
if ((${#failed[@]})); then
  echo "FAILED steps: ${failed[*]} (logs in $out)" | tee -a "$out/summary.txt"
  exit 1
fi
echo "all steps passed (logs in $out)" | tee -a "$out/summary.txt"
