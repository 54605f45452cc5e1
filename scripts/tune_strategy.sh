#!/usr/bin/env bash
# Tunes the CPU strategy thresholds (runtime.<op>.split_max_plane,
# runtime.train_fwd.split_max_plane_add, runtime.<op>.split_max_cache_percent) of the machine
# file the build uses, from the built
# kernels: fused against split on the suite's shapes and ResNet-50's layers, for every ISA given,
# and writes the report to bench/results/strategy_<machine>.md. Run it after scripts/tune.sh
# and a build with the tuned file (-DBN2D_SCHEDULE_MACHINE=<machine>); the next build reads
# the thresholds.
#
#   scripts/tune_strategy.sh                          # ISAs avx512,avx2 (those this CPU runs)
#   scripts/tune_strategy.sh --isas avx2 --repetitions 7 --dry-run
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BN2D_BUILD_DIR:-$root/build}"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh" --target bn2d_bench
machine="$(sed -n 's/^BN2D_SCHEDULE_MACHINE:STRING=//p' "$build/CMakeCache.txt")"
exec "$root/.venv/bin/python" "$root/scripts/tune_strategy.py" --bench "$build/bench/bn2d_bench" \
  --params "$root/schedules/machines/${machine:-default}.params" \
  --markdown-out "$root/bench/results/strategy_${machine:-default}.md" "$@"
