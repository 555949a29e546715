#!/usr/bin/env bash
# Run diffusers' own scheduler tests (tests/schedulers/test_scheduler_*.py of a diffusers checkout)
# against fastdiff's classes (scripts/diffusers_tests_plugin.py swaps them in) and print pass/fail
# per file. Nothing of diffusers' is copied here: the tests are read from the checkout.
#   scripts/diffusers_scheduler_tests.sh DIFFUSERS_CHECKOUT [test_scheduler_ddim.py ...]
# With no file names, every file whose scheduler fastdiff.schedulers provides. FASTDIFF_NO_SWAP=1
# runs diffusers' own classes (the baseline: what fails in this environment anyway).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
checkout="${1:?usage: $0 DIFFUSERS_CHECKOUT [test files]}"
shift
if [[ ! -d "$checkout/tests/schedulers" ]]; then
  echo "diffusers_scheduler_tests: $checkout/tests/schedulers not found" >&2
  exit 2
fi
files=("$@")
if (( ${#files[@]} == 0 )); then
  files=(test_scheduler_ddim.py test_scheduler_ddpm.py test_scheduler_dpm_multi.py test_scheduler_euler.py
         test_scheduler_euler_ancestral.py test_scheduler_heun.py test_scheduler_unipc.py test_scheduler_lcm.py
         test_scheduler_pndm.py test_scheduler_lms.py test_scheduler_edm_euler.py test_scheduler_ddim_inverse.py
         test_scheduler_ipndm.py test_scheduler_sasolver.py test_scheduler_dpm_multi_inverse.py
         test_scheduler_edm_dpmsolver_multistep.py test_scheduler_deis.py test_scheduler_dpm_single.py
         test_scheduler_kdpm2_discrete.py test_scheduler_kdpm2_ancestral.py
         test_scheduler_tcd.py test_scheduler_dpm_sde.py)
fi
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
printf '%-40s %7s %7s %8s %8s\n' file passed failed refused skipped
total=(0 0 0 0)
for f in "${files[@]}"; do
  (cd "$checkout" && PYTHONPATH="$root/scripts:$root${PYTHONPATH:+:$PYTHONPATH}" \
    python -m pytest "tests/schedulers/$f" -q -p no:cacheprovider -p diffusers_tests_plugin >"$log/$f.log" 2>&1)
  line=$(grep '^fastdiff-summary' "$log/$f.log" | tail -n 1)
  if [[ -z "$line" ]]; then
    printf '%-40s %s\n' "$f" "did not run:"; tail -n 5 "$log/$f.log"; continue
  fi
  read -r p fl r s < <(sed -E 's/.*passed=([0-9]+) failed=([0-9]+) refused=([0-9]+) skipped=([0-9]+).*/\1 \2 \3 \4/' <<<"$line")
  printf '%-40s %7d %7d %8d %8d\n' "$f" "$p" "$fl" "$r" "$s"
  total=($((total[0] + p)) $((total[1] + fl)) $((total[2] + r)) $((total[3] + s)))
  grep -E '^(FAILED|ERROR) ' "$log/$f.log" | sed 's/^/    /'
  grep '^fastdiff-refused' "$log/$f.log" | sed 's/^fastdiff-refused /    refused: /'
done
printf '%-40s %7d %7d %8d %8d\n' total "${total[@]}"
