#!/usr/bin/env bash
# SyncBatchNorm2d's overhead: bench/bench_sync.cpp under mpirun with 1, 2 and 4 processes
# (BN2D_SYNC_PROCESSES), each against BatchNorm2d on the same per-process batch in the same run.
# Writes out/bench_sync_<P>.json and out/bench_sync.md (medians, paired ratios, bytes sent).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh" --target bn2d_bench_sync
out="$root/out"
mkdir -p "$out"
# Open MPI: as root only when told; more processes than cores with --oversubscribe.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
jsons=()
for p in ${BN2D_SYNC_PROCESSES:-1 2 4}; do
  mpirun -np "$p" "${BN2D_BUILD_DIR:-$root/build}/bench/bn2d_bench_sync" \
    --benchmark_out="$out/bench_sync_$p.json" --benchmark_out_format=json "$@" >/dev/null
  jsons+=("$out/bench_sync_$p.json")
done
"$root/.venv/bin/python" - "${jsons[@]}" > "$out/bench_sync.md" <<'PY'
import json, statistics, sys, collections
print("| per-process batch | processes | BatchNorm2d ms | SyncBatchNorm2d ms | sync / single | sent per step | tensor |")
print("|---|---:|---:|---:|---:|---:|---:|")
for path in sys.argv[1:]:
    runs = json.load(open(path))["benchmarks"]
    t = collections.defaultdict(dict)  # (label) -> {(kind, rep): run}
    for r in runs:
        kind, rep = r["name"].split("/")[0], r["name"].split("rep:")[1].split("/")[0]
        t[r["label"]][(kind, rep)] = r
    for label, d in t.items():
        reps = sorted({rep for _, rep in d})
        single = [d[("single_process", r)]["real_time"] for r in reps]
        sync = [d[("sync", r)]["real_time"] for r in reps]
        ratio = statistics.median(b / a for a, b in zip(single, sync))
        any_sync = d[("sync", reps[0])]
        print(f"| {label.replace(' per process', '')} | {int(any_sync['processes'])} | "
              f"{statistics.median(single):.3f} | {statistics.median(sync):.3f} | {ratio:.2f}x | "
              f"{any_sync['sent_per_step']:.0f} B | {any_sync['tensor_bytes'] / 2**20:.1f} MiB |")
PY
cat "$out/bench_sync.md"
