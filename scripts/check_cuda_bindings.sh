#!/usr/bin/env bash
# Syntax-check the torch side of the CUDA kernels (csrc/cuda/bindings*.cpp) without a GPU or a CUDA
# build of torch installed: compile them with g++ -fsyntax-only against the headers of the CUDA wheel
# of the installed torch version, fetched once from PyPI (headers only are kept, in a cache folder),
# and the CUDA toolkit's headers (from nvcc's installation).
#   scripts/check_cuda_bindings.sh
#   FASTDIFF_CUDA_TORCH_INCLUDE=/path/to/torch/include scripts/check_cuda_bindings.sh   # headers already on disk
# Exit 1 when a binding does not compile. When the headers cannot be had (no network), it says so
# and exits 0: the check is skipped, not passed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"

torch_version="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" || {
  echo "check_cuda_bindings: torch is not importable; skipped" >&2; exit 0; }

include="${FASTDIFF_CUDA_TORCH_INCLUDE:-}"
if [[ -z "$include" ]]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/fastdiff/torch-cuda-headers-$torch_version"
  include="$cache/torch/include"
  if [[ ! -f "$include/ATen/cuda/CUDAContext.h" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "check_cuda_bindings: fetching the headers of torch $torch_version's CUDA wheel from PyPI"
    cert=()
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cert=(--cert /etc/ssl/certs/ca-certificates.crt)
    # --isolated: ignore local wheel folders and indexes, which hold the CPU build
    if ! timeout 900 "$py" -m pip --isolated --disable-pip-version-check download "torch==$torch_version" --no-deps --only-binary=:all: \
         --index-url https://pypi.org/simple "${cert[@]}" -d "$tmp" -q; then
      echo "check_cuda_bindings: could not download torch $torch_version from PyPI; skipped (not passed)" >&2
      exit 0
    fi
    wheel="$(ls "$tmp"/torch-*.whl 2>/dev/null | head -n 1)"
    "$py" - "$wheel" "$cache" <<'EOF' || { echo "check_cuda_bindings: could not unpack ${wheel:-the wheel} into $cache; skipped (not passed)" >&2; exit 0; }
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("torch/include/")]
    z.extractall(dest, members)
print(f"check_cuda_bindings: kept {len(members)} header files")
EOF
    rm -f "$wheel"
    if [[ ! -f "$include/ATen/cuda/CUDAContext.h" ]]; then
      echo "check_cuda_bindings: torch $torch_version from PyPI has no CUDA headers; skipped (not passed)" >&2
      exit 0
    fi
  fi
fi

nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
cuda_include=""
for d in "${CUDA_HOME:-}/include" "$(dirname "$(readlink -f "$nvcc")")/../include" /usr/local/cuda/include /usr/local/cuda-*/include; do
  if [[ -f "$d/cuda_runtime.h" ]]; then cuda_include="$d"; break; fi
done
if [[ -z "$cuda_include" ]]; then
  echo "check_cuda_bindings: no CUDA toolkit headers (cuda_runtime.h) found; skipped (not passed)" >&2
  exit 0
fi
py_include="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"

flags=(-std=c++17 -fsyntax-only -Wall -Wextra -Werror -I "$root/csrc" -isystem "$include"
       -isystem "$include/torch/csrc/api/include" -isystem "$cuda_include" -isystem "$py_include")
failed=0
for f in "$root"/csrc/cuda/bindings*.cpp; do
  start=$(date +%s%N)
  if g++ "${flags[@]}" "$f"; then status=ok; else status=FAILED; failed=1; fi
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-34s %-6s %3d.%01d s\n' "${f#"$root"/}" "$status" $((ms / 1000)) $((ms % 1000 / 100))
done
exit $failed
