#!/usr/bin/env bash
# The GPU runbook: two commands, each well under 8 minutes on one H100 (16 cores, no network).
#
#   scripts/gpu_check.sh tests OUT [--dry-run]   build for this GPU's arch; gpu-marked tests; the
#                                                backend-parametrised op tests on CUDA; compute-
#                                                sanitizer memcheck + racecheck over every CUDA family
#   scripts/gpu_check.sh bench OUT [--dry-run]   every family's benchmark, quick; reuses the extension
#                                                the first command built (carry fastdiff/_C*.so)
#
# OUT gets at most four files, written as each step ends (a killed run still returns them):
# summary.txt (the preflight line, then one line per step: status, seconds, the step's budget and its
# expected GPU time), <command>.log (everything every step printed), and for `tests` the built
# fastdiff/_C*.so (copy it into fastdiff/ and carry it to the `bench` call), for `bench`
# results.tar (each benchmark's JSON and markdown, appended step by step).
#
# With the device tool: run `tests`, copy the .so it returns into fastdiff/ here, then run `bench`
# with carry ["fastdiff/_C.cpython-312-x86_64-linux-gnu.so"] (the GPU machines' Python is 3.12); a
# `bench` that finds no CUDA build of the extension builds one first (about 90 s more).
#
# Every step runs under `timeout`; a step gets at most its budget and never more than what is left
# of the command's deadline (GPU_CHECK_DEADLINE_S, default 450 s), so the command ends in time and
# the steps after a slow one are reported as skipped rather than lost. Triton kernels launch one
# fixed configuration (FASTDIFF_TRITON_AUTOTUNE=0) unless the caller sets that variable.
#
# --dry-run rehearses a command on a machine without a GPU: the preflight checks what it can (tools,
# nvcc accepting a kernel for the target arch), every step runs its CPU form (test collection, the
# sanitizer cases and benchmarks on CPU tensors) or prints the GPU command it would run after
# checking that the scripts, tests and options it names exist. Exit status 1 if any step failed.
#
# Expected GPU times (estimates: nothing here has run on a GPU yet; replace with measured ones):
#   tests: preflight 5 s, build 90 s, info 5 s, pytest-gpu 60 s, pytest-cuda-backends 75 s (8
#          pytest-xdist workers: Triton compiles each kernel specialisation once, ~1-3 s apiece),
#          memcheck 45 s, racecheck 60 s                                    ~5.7 min (deadline 7.5)
#   bench: preflight 5 s, extension 2 s (reused), elementwise 40 s, adaln 75 s, attention 70 s,
#          overhead 40 s, attention-tune 60 s, geglu 30 s, group_norm 45 s  ~6.2 min (deadline 7.5)
# Environment: PYTHON (default python3), FASTDIFF_CUDA_ARCHS (default: this GPU's compute
# capability), JOBS (build parallelism, default: all cores), GPU_CHECK_DEADLINE_S.
set -u -o pipefail

usage() { echo "usage: $0 tests|bench OUT [--dry-run]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
mode="$1"
[[ "$mode" == tests || "$mode" == bench ]] || usage
dry=0
if [[ $# -eq 3 ]]; then [[ "$3" == --dry-run ]] || usage; dry=1; fi
mkdir -p "$2" || exit 2
out="$(cd "$2" && pwd)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
py="${PYTHON:-python3}"
export PYTHON="$py" PYTHONUNBUFFERED=1
export FASTDIFF_TRITON_AUTOTUNE="${FASTDIFF_TRITON_AUTOTUNE:-0}"
start_all=$(date +%s)
# A dry run on a shared 2-core CI machine is slower than the GPU run it rehearses: 30 min, not 7.5.
deadline_s="${GPU_CHECK_DEADLINE_S:-$((dry ? 1800 : 450))}"
deadline=$((start_all + deadline_s))
log="$out/$mode.log"
summary="$out/summary.txt"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
: >"$log"
{
  echo "gpu_check $mode$([[ $dry == 1 ]] && echo ' --dry-run'): $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$([[ -n "$(git status --porcelain 2>/dev/null)" ]] && echo ' (dirty)')"
  echo "FASTDIFF_TRITON_AUTOTUNE=$FASTDIFF_TRITON_AUTOTUNE, deadline $deadline_s s"
} | tee "$summary"
failed=()

# step NAME BUDGET_S EXPECTED_GPU_S CMD...: run CMD under timeout, its output appended to the log,
# one line into the summary. The timeout is the budget, cut to what is left before the deadline.
step() {
  local name="$1" budget="$2" expected="$3"
  shift 3
  local now left limit t0 rc status secs
  now=$(date +%s)
  left=$((deadline - now - 5))
  limit=$((budget < left ? budget : left))
  if ((limit < 5)); then
    printf '%-22s %-8s %5s s   (budget %3d s, expected %3d s on GPU)\n' "$name" "SKIPPED" "-" "$budget" "$expected" | tee -a "$summary"
    failed+=("$name")
    return 1
  fi
  { echo; echo "==== $name (timeout $limit s): $*"; } >>"$log"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  if ((rc == 0)); then status=ok; elif ((rc == 124 || rc == 137)); then status=TIMEOUT; else status="FAIL:$rc"; fi
  printf '%-22s %-8s %5d s   (budget %3d s, expected %3d s on GPU)\n' "$name" "$status" "$secs" "$budget" "$expected" | tee -a "$summary"
  if ((rc != 0)); then
    failed+=("$name")
    tail -n 30 "$log" | sed 's/^/    | /'
  fi
  return $rc
}

# would NAME CMD...: a GPU-only command in a dry run: say what would run (the caller checked its parts).
would() {
  local name="$1"
  shift
  printf '%-22s %-8s %5s s   would run: %s\n' "$name" "dry-run" "-" "$(printf '%q ' "$@")" | tee -a "$summary"
}

need_file() {  # fail the dry run loudly when something the runbook names is missing
  local f
  for f in "$@"; do
    if [[ ! -e "$f" ]]; then
      echo "gpu_check: $f does not exist (named by the runbook)" | tee -a "$summary" >&2
      failed+=("missing:$f")
    fi
  done
}

# ---- preflight: one line, first ------------------------------------------------------------------
preflight() {
  local problems=() facts=() torch_cuda nvcc_ver tool arch cu
  torch_cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null) || problems+=("python/torch not importable")
  if [[ $dry == 1 ]]; then
    arch="${FASTDIFF_CUDA_ARCHS:-90}"
  else
    arch="${FASTDIFF_CUDA_ARCHS:-$("$py" -c 'import torch; c = torch.cuda.get_device_capability(0); print(f"{c[0]}{c[1]}")' 2>/dev/null)}"
    [[ -z "$arch" ]] && problems+=("torch sees no CUDA device")
    facts+=("gpu $("$py" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null) sm_${arch}")
  fi
  arch="${arch%%;*}"
  nvcc_ver=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p')
  facts+=("torch cuda ${torch_cuda:-none}" "nvcc ${nvcc_ver:-missing}")
  if [[ -z "$nvcc_ver" ]]; then
    problems+=("nvcc not found")
  elif [[ -n "$torch_cuda" && "${nvcc_ver%%.*}" != "${torch_cuda%%.*}" ]]; then
    problems+=("nvcc $nvcc_ver and torch's CUDA $torch_cuda differ in major version")
  elif [[ -z "$torch_cuda" && $dry == 0 ]]; then
    problems+=("torch was built without CUDA")
  fi
  for tool in cmake ninja; do
    if command -v "$tool" >/dev/null; then facts+=("$tool $("$tool" --version | head -n 1 | grep -o '[0-9]\+\(\.[0-9]\+\)*' | head -n 1)")
    else problems+=("$tool not on PATH"); fi
  done
  for mod in pytest hypothesis triton; do
    local v
    if v=$("$py" -c "import $mod; print($mod.__version__)" 2>/dev/null); then facts+=("$mod $v"); else problems+=("python module $mod missing"); fi
  done
  if [[ -n "$nvcc_ver" && -n "$arch" ]]; then
    printf '__global__ void k(float* p) { p[threadIdx.x] *= 2.0f; }\n' >"$work/preflight.cu"
    if nvcc -std=c++17 -arch="sm_$arch" -c "$work/preflight.cu" -o "$work/preflight.o" >"$work/preflight.txt" 2>&1; then
      facts+=("nvcc+$(basename "$(command -v "${CXX:-g++}" || echo g++)") accept sm_$arch")
    else
      problems+=("nvcc rejects a kernel for sm_$arch: $(head -n 2 "$work/preflight.txt" | tr '\n' ' ')")
    fi
  fi
  cu="${arch:-?}"
  echo "$cu" >"$work/arch"
  if ((${#problems[@]})); then
    echo "preflight: FAIL: $(IFS=';'; echo "${problems[*]}") | $(IFS=','; echo "${facts[*]}")" | tee -a "$summary"
    return 1
  fi
  echo "preflight: ok | $(IFS=','; echo "${facts[*]}")" | tee -a "$summary"
}

if ! preflight; then
  echo "gpu_check: preflight failed; nothing else was run" | tee -a "$summary"
  exit 1
fi
arch="$(cat "$work/arch")"

cuda_ext_ok() {  # the extension in fastdiff/ imports under this python and holds the CUDA kernels
  "$py" -c 'import fastdiff, sys; sys.exit(0 if fastdiff._backend.cuda_compiled() else 1)' >/dev/null 2>&1
}

build() {
  if [[ $dry == 1 ]]; then
    need_file scripts/dev_build.sh CMakeLists.txt
    grep -q FASTDIFF_CUDA_ARCHS CMakeLists.txt || { echo "gpu_check: CMakeLists.txt has no FASTDIFF_CUDA_ARCHS" | tee -a "$summary"; failed+=(build); }
    would build env FASTDIFF_CUDA=1 FASTDIFF_CUDA_ARCHS="$arch" JOBS="${JOBS:-$(nproc)}" scripts/dev_build.sh
  else
    step build 270 90 env FASTDIFF_CUDA=1 FASTDIFF_CUDA_ARCHS="$arch" JOBS="${JOBS:-$(nproc)}" scripts/dev_build.sh
  fi
}

# ---- tests -----------------------------------------------------------------------------------------
run_tests() {
  build
  local info='import json, fastdiff; print(json.dumps(fastdiff.info(), indent=1, default=str))'
  if [[ $dry == 1 ]]; then
    step info 300 5 "$py" -c "$info"
  else
    # Without the CUDA kernels the steps below still test Triton on the GPU (cuda cases skip or fail).
    step info 60 5 "$py" -c "$info; assert fastdiff._backend.cuda_compiled(), 'fastdiff._C holds no CUDA kernels'"
    local so
    for so in fastdiff/_C*.so; do
      [[ "$so" -nt CMakeLists.txt ]] && cp "$so" "$out/" && echo "kept $so ($(du -h "$so" | cut -f1)) in OUT: copy it into fastdiff/ and carry it to 'bench'" | tee -a "$summary"
    done
  fi

  local pytest=("$py" -m pytest -q -p no:cacheprovider -rfEs --durations=10) xdist=()
  # Workers spread the Triton JIT compiles (one per kernel specialisation) over the cores.
  "$py" -c "import xdist" 2>/dev/null && xdist=(-n "${PYTEST_WORKERS:-8}")
  # Every gpu-marked test, once.
  need_file tests/ops/test_cuda_specific.py tests/ops/test_adaln_cuda.py tests/ops/test_attention_cuda.py tests/samplers/test_sampling_gpu.py
  if [[ $dry == 1 ]]; then
    step pytest-gpu 300 60 "${pytest[@]}" -m gpu --collect-only
  else
    step pytest-gpu 150 60 "${pytest[@]}" "${xdist[@]}" -m gpu
  fi
  # The backend-parametrised op tests (ids "cuda-cuda", "triton-cuda"), not gpu-marked, on CUDA tensors.
  local paths=(tests/ops tests/nn)
  need_file "${paths[@]}"
  if [[ $dry == 1 ]]; then
    step pytest-cuda-backends 300 60 "${pytest[@]}" "${paths[@]}" -m "not gpu" --collect-only
    would pytest-cuda-backends "${pytest[@]}" "${paths[@]}" -m "not gpu" -k cuda
  else
    step pytest-cuda-backends 150 75 "${pytest[@]}" "${xdist[@]}" "${paths[@]}" -m "not gpu" -k cuda
  fi

  # compute-sanitizer over small cases of every CUDA family (no caching allocator: every tensor is
  # its own allocation, so a read past its end is seen).
  need_file scripts/gpu_sanitize_cases.py
  local cases=("$py" scripts/gpu_sanitize_cases.py)
  if [[ $dry == 1 ]]; then
    step sanitize-cases-cpu 300 0 "${cases[@]}" --device cpu
    would memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 "${cases[@]}"
    would racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "${cases[@]}"
    return
  fi
  local sanitizer
  sanitizer="$(command -v compute-sanitizer || true)"
  [[ -z "$sanitizer" && -x /usr/local/cuda/bin/compute-sanitizer ]] && sanitizer=/usr/local/cuda/bin/compute-sanitizer
  if [[ -z "$sanitizer" ]]; then
    echo "memcheck/racecheck       FAIL     compute-sanitizer not found" | tee -a "$summary"
    failed+=(sanitizer)
    return
  fi
  step memcheck 120 45 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
    --print-limit 20 "${cases[@]}"
  step racecheck 150 60 "$sanitizer" --tool racecheck --error-exitcode 1 --print-limit 20 "${cases[@]}"
}

# ---- bench -----------------------------------------------------------------------------------------
# bench_step NAME BUDGET EXPECTED CMD...: a benchmark writing into $work/NAME (passed as {dir} in
# CMD), appended to OUT/results.tar when it ends, whatever its status.
bench_step() {
  local name="$1" budget="$2" expected="$3"
  shift 3
  local dir="$work/$name" args=() a
  mkdir -p "$dir"
  for a in "$@"; do args+=("${a//\{dir\}/$dir}"); done
  step "$name" "$budget" "$expected" "${args[@]}"
  local rc=$?
  if [[ -n "$(ls -A "$dir")" ]]; then
    tar -rf "$out/results.tar" -C "$work" "$name"
  fi
  return $rc
}

run_bench() {
  if [[ $dry == 1 ]]; then
    build
  elif cuda_ext_ok; then
    echo "extension              reused   $(ls fastdiff/_C*.so | tr '\n' ' ')" | tee -a "$summary"
  else
    echo "extension              missing  no fastdiff/_C*.so with CUDA kernels for $("$py" -V): building" | tee -a "$summary"
    build
  fi
  # name, budget, expected GPU seconds, the GPU arguments, and what a dry run appends to them (CPU
  # tensors, tiny sizes, one round; argparse keeps the last value), so a dry run parses every option
  # the GPU run passes.
  bench elementwise 120 40 "all --quick --device cuda --json {dir}/bench.json --md {dir}/bench.md" \
    "--device cpu --sizes tiny --rounds 1"
  bench adaln 150 75 "adaln --device cuda --shapes dit-xl-512 --rounds 3 --modes forward,forward+backward --save {dir}" \
    "--device cpu --rounds 1 --no-compile"
  bench attention 150 70 "attention --quick --modes fwd,fwd+bwd --warmup 5 --rep 30 --out {dir}" \
    "--cpu --pairs 1 --min-sample-ms 1"
  bench overhead 90 40 "overhead --device cuda --steps 20 --repeats 3 --shapes 1x4x64x64,2x4x128x128 --out {dir}" \
    "--device cpu --steps 2 --repeats 1 --shapes 1x4x8x8"
  # The dispatch table from forward timings (commit {dir}/attention_table.json as fastdiff/ops/attention_table.json).
  bench attention-tune 150 60 "attention --tune --table {dir}/attention_table.json --models sdxl,sd15 --modes fwd --warmup 5 --rep 30 --out {dir}" \
    "--cpu --pairs 1 --min-sample-ms 1 --quick"
  # The two newest families last: the dispatch table above matters more if the deadline cuts the run.
  bench geglu 60 30 "geglu --device cuda --quick --rounds 3 --no-compile --save {dir}" \
    "--device cpu --rounds 1"
  bench group_norm 90 45 "group_norm --device cuda --shapes vae-512-c512-64,vae-1024-c128-1024,unet-c320-64 --rounds 3 --save {dir}" \
    "--device cpu --shapes unet-c1280-8 --rounds 1 --no-compile"
}

bench() {
  local name="bench-$1" budget="$2" expected="$3" args extra
  read -ra args <<<"$4"
  read -ra extra <<<"$5"
  if [[ $dry == 1 ]]; then
    bench_step "$name" 300 "$expected" "$py" -m fastdiff bench "${args[@]}" "${extra[@]}"
  else
    bench_step "$name" "$budget" "$expected" "$py" -m fastdiff bench "${args[@]}"
  fi
}

if [[ $mode == tests ]]; then run_tests; else run_bench; fi

total=$(($(date +%s) - start_all))
if ((${#failed[@]})); then
  echo "gpu_check $mode: FAILED steps: ${failed[*]} (${total} s; log: $log)" | tee -a "$summary"
  exit 1
fi
echo "gpu_check $mode: all steps passed (${total} s; log: $log)" | tee -a "$summary"
