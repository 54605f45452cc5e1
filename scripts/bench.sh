#!/usr/bin/env bash
# Runs the CPU benchmark the way the README's table was made and writes out/bench.json,
# out/bench_table.md, out/bench_bandwidth.png and out/bench_resnet50.md. Extra arguments go to the benchmark
# (e.g. --benchmark_filter=train_fwd/ or --bn2d_threads=1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh" --target bn2d_bench
# The plot needs matplotlib; installed into .venv on first use only.
"$root/.venv/bin/python" -c "import matplotlib" 2>/dev/null ||
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check matplotlib==3.11.2
out="$root/out"
mkdir -p "$out"
# Repetitions interleaved at random: machines are shared and noisy, and ratios are only
# meaningful between runs that saw the same noise.
"${BN2D_BUILD_DIR:-$root/build}/bench/bn2d_bench" --benchmark_min_time=0.1 \
  --benchmark_repetitions=7 --benchmark_report_aggregates_only=true \
  --benchmark_enable_random_interleaving=true \
  --benchmark_out="$out/bench.json" --benchmark_out_format=json "$@"
# Against the floor (the lower of streaming and ordinary stores), both also as columns, and ours
# in NHWC.
"$root/.venv/bin/python" "$root/scripts/bench_report.py" "$out/bench.json" \
  --bound-name floor_min --peers onednn_nchw,onednn_nhwc,torch,torch_nhwc \
  --columns ours_nhwc,floor,bound,floor_via_scratch \
  --markdown-out "$out/bench_table.md" --png "$out/bench_bandwidth.png"
# Issue 17's targets (ours/floor per op) and the geometric mean of peer/ours.
"$root/.venv/bin/python" "$root/scripts/bench_targets.py" "$out/bench.json" \
  --markdown-out "$out/bench_targets.md"
# ResNet-50's batch-norm layers: one training step and one inference pass, per layout.
"$root/.venv/bin/python" "$root/scripts/resnet50_report.py" "$out/bench.json" \
  --markdown-out "$out/bench_resnet50.md"
