#!/usr/bin/env bash
# Compile every Triton kernel of fastdiff for sm_80 and sm_90, without a GPU, under two Triton
# versions: the one installed (the newest release, as CI installs it) and 3.6.0, the version the GPU
# machines carry. Triton 3.6.0 is installed once into .cache/triton-3.6.0 (ignored by git) with
# `pip install --target --no-deps`; compiled kernels are cached per version in .cache/triton-kernels-*
# (Triton's own cache, keyed by kernel source and options), so a rerun with unchanged kernels is fast.
#   scripts/check_triton.sh            # elementwise + adaln kernels in full, attention --ci subset
#   scripts/check_triton.sh --full     # every attention head dim and mask variant too (slow: ~20 min)
# The two versions compile in parallel. Exit 1 when any kernel fails to compile under either version.
# When triton==3.6.0 cannot be installed because the package index is unreachable, that half prints
# a "SKIPPED" line and does not fail; any other install failure fails.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
py="${PYTHON:-python}"
attn_mode=(--ci)
[[ "${1:-}" == --full ]] && attn_mode=()
old=3.6.0
old_dir="$root/.cache/triton-$old"
mkdir -p "$root/.cache"

if ! PYTHONPATH="$old_dir" "$py" -c "import triton, sys; sys.exit(triton.__version__ != '$old')" 2>/dev/null; then
  rm -rf "$old_dir"
  echo "check_triton: installing triton==$old into ${old_dir#"$root"/}"
  if ! "$py" -m pip install --disable-pip-version-check -q "triton==$old" --target "$old_dir" --no-deps 2>"$root/.cache/triton-install.log"; then
    rm -rf "$old_dir"
    if ! timeout 60 "$py" -m pip download --disable-pip-version-check -q --no-deps "triton==$old" -d "$(mktemp -d)" >/dev/null 2>&1 &&
       ! timeout 30 "$py" -m pip index versions triton >/dev/null 2>&1; then
      echo "check_triton: triton $old: SKIPPED (the package index is unreachable; the GPU machines' Triton was NOT checked)"
      old_dir=""
    else
      echo "check_triton: FAILED to install triton==$old although the package index answers:" >&2
      cat "$root/.cache/triton-install.log" >&2
      exit 1
    fi
  fi
fi

# check LABEL PYTHONPATH: both compile checks under one Triton; output into .cache/check-triton-LABEL.log
check() {
  local label="$1" path="$2" log="$root/.cache/check-triton-$1.log" rc=0
  export TRITON_CACHE_DIR="$root/.cache/triton-kernels-$label" PYTHONPATH="$path" TRITON_DEFAULT_FP_FUSION=1
  {
    "$py" scripts/triton_compile_check.py --arch 80 --arch 90 || rc=1
    "$py" scripts/triton_attention_compile_check.py --arch 80 --arch 90 "${attn_mode[@]}" || rc=1
  } >"$log" 2>&1
  return $rc
}

start=$(date +%s)
newest="$("$py" -c 'import triton; print(triton.__version__)')" || { echo "check_triton: triton is not importable" >&2; exit 1; }
pids=()
check "$newest" "" & pids+=($!)
labels=("$newest")
if [[ -n "$old_dir" ]]; then
  check "$old" "$old_dir" & pids+=($!)
  labels+=("$old")
fi
failed=0
for i in "${!pids[@]}"; do
  log="$root/.cache/check-triton-${labels[$i]}.log"
  if wait "${pids[$i]}"; then status=ok; else status=FAILED; failed=1; fi
  grep -E '^(triton |FAIL)' -A1 "$log" | grep -v '^--$'
  echo "check_triton: triton ${labels[$i]}: $status (log: ${log#"$root"/})"
done
echo "check_triton: $(($(date +%s) - start)) s"
exit $failed
