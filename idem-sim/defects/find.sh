#!/bin/sh
# Re-introduces one known defect into idem-runtime (idem-sim/defects/<name>.patch), runs a CI
# seed set against it — the in-process one (`seeds`, the default) or one on real servers
# (`redis`) — and takes it out again, whatever the run's result. The seed set must fail,
# printing the operations it took and the shrunk scenario.
#
#   idem-sim/defects/find.sh wait-then-proceed
#   idem-sim/defects/find.sh full-redis-classed-unavailable redis
set -eu
cd "$(dirname "$0")/../.."
patch="idem-sim/defects/$1.patch"
git apply --check "$patch"
git apply "$patch"
trap 'git apply -R "$patch"' EXIT
trap 'exit 1' INT TERM HUP PIPE
if IDEM_SIM_SEEDS="${IDEM_SIM_SEEDS:-}" cargo test -q -p idem-sim --test "${2:-seeds}" -- --nocapture 2>&1 | tee /tmp/idem-defect-"$1".log | grep -E "^first violation|^seed [0-9]+:|seeds(, | on)" ; then :; fi
if grep -q "^first violation" /tmp/idem-defect-"$1".log; then
  echo "found: $1"
else
  echo "NOT FOUND: $1"
  exit 1
fi
