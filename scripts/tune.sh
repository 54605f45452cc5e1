#!/usr/bin/env bash
# Tunes the schedule knobs of every kernel on this machine and writes a machine file that the
# build reads with -DBN2D_SCHEDULE_MACHINE=<machine>, plus a report (<report>.json, .md, .png):
# tuned vs default vs Halide's autoschedulers, time / floor per kernel and problem.
#
#   scripts/tune.sh --budget-seconds 1200                    # -> schedules/machines/<machine>.params
#                                                            #    and bench/results/tune_<machine>.md
#   scripts/tune.sh --budget-seconds 120 --out /tmp/t.params # -> /tmp/t.params, /tmp/t.tune.md
#   scripts/tune.sh --budget-seconds 300 --backend opencl --kernels train_fwd --shapes my.txt
#
# Options (tools/tune/options.cpp; --help lists them all): --budget-seconds N (whole run, required),
# --out FILE, --machine NAME, --shapes FILE, --kernels LIST, --backend cpu|cuda|opencl,
# --dtypes LIST, --search descent|random, --autoschedulers LIST|none, --report PREFIX.
# Interrupted (Ctrl-C), the same command resumes from <out>.journal with the budget left.
# The budget counts from the tuner's start; setting up and building it (first run: a minute or
# two) comes before.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for arg in "$@"; do
  if [[ "$arg" == "--help" || "$arg" == "-h" ]]; then
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
  fi
done
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh" --target bn2d_tune
tuner="${BN2D_BUILD_DIR:-$root/build}/tools/bn2d_tune"
# Where the tuner writes its report: ask it (the same rules as its --out and --report).
report="$("$tuner" "$@" --print-report-prefix)"
"$tuner" "$@"
# The plot needs matplotlib; installed into .venv on first use only (the table does not).
"$root/.venv/bin/python" -c "import matplotlib" 2>/dev/null ||
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check matplotlib==3.11.2 ||
  echo "tune.sh: matplotlib unavailable: no plot" >&2
"$root/.venv/bin/python" "$root/scripts/tune_report.py" "$report.json" \
  --markdown-out "$report.md" --png "$report.png"
echo "tune.sh: report $report.md"
