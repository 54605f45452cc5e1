#!/usr/bin/env python3
"""Tunes the CPU strategy thresholds (bn2d::CpuStrategy): for each ISA asked, runs the benchmark's
ours_fused and ours_split (NCHW float32 training forward and backward, the suite's shapes and
ResNet-50's layers) in one interleaved run, and sets each threshold in a machine file to the
largest plane at or below which split wins on every shape and every ISA measured:
runtime.<op>.split_max_plane from the calls without a residual, runtime.train_fwd.
split_max_plane_add from ResNet-50's forward_add layers (add + ReLU). Writes a report: per shape
and op, each strategy's time / floor (the lower of the streaming floor and the ordinary-store
bound) and the choice.

  scripts/tune_strategy.py --bench build/bench/bn2d_bench --isas avx512,avx2 \\
      --params schedules/machines/default.params [--markdown-out FILE] [--repetitions N]
  scripts/tune_strategy.py --from-json run_avx512.json,run_avx2.json --params FILE

The machine file is rewritten in place: the three runtime.* lines replaced (or appended), every
other line kept. --dry-run reports without writing it.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

# The thresholds: (benchmark op, the layers' tail, machine-file kernel, knob). The suite's shapes
# have no tail ("none").
THRESHOLDS = [("train_fwd", "none", "train_fwd", "split_max_plane"),
              ("bwd", "none", "train_bwd", "split_max_plane"),
              ("train_fwd", "add_relu", "train_fwd", "split_max_plane_add")]
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
IMPLS = "(ours_fused|ours_split|floor|bound)"
FILTER = (r"^(train_fwd|bwd)/" + IMPLS + r"/[0-9x]+/real_time|^resnet50/(train_fwd|bwd)/" + IMPLS +
          r"/[0-9x]+/(none|add_relu)/")


def run(bench, isa, reps):
    """The benchmark's JSON from one interleaved run under BN2D_MAX_CPU_ISA=isa."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, BN2D_MAX_CPU_ISA=isa)
        cmd = [bench, "--benchmark_filter=" + FILTER,
               "--benchmark_repetitions=%d" % reps, "--benchmark_report_aggregates_only=true",
               "--benchmark_enable_random_interleaving=true",
               "--benchmark_out=" + out.name, "--benchmark_out_format=json"]
        print("tune_strategy: %s (BN2D_MAX_CPU_ISA=%s)" % (" ".join(cmd), isa), file=sys.stderr)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def medians(data):
    """(context, {(op, impl, shape, tail): median ms}) of the strategy benchmarks in a run."""
    times = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median" or b.get("error_occurred"):
            continue
        parts = b["run_name"].split("/")
        key = tuple(parts[1:5]) if parts[0] == "resnet50" else tuple(parts[:3]) + ("none",)
        times[key] = b["real_time"] * TO_MS[b["time_unit"]]
    return data.get("context", {}), times


def plane(shape):
    n, c, h, w = (int(v) for v in shape.split("x"))
    return h * w


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", help="the benchmark binary (build/bench/bn2d_bench)")
    ap.add_argument("--from-json", help="comma-separated benchmark JSON files, one per ISA, "
                    "instead of running --bench")
    ap.add_argument("--isas", default="avx512,avx2")
    ap.add_argument("--params", required=True, help="machine file to update")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--markdown-out")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()

    if not args.bench and not args.from_json:
        ap.error("--bench or --from-json is required")
    if args.from_json:
        datas = [(None, json.load(open(p))) for p in args.from_json.split(",")]
    else:
        datas = [(isa, run(args.bench, isa, args.repetitions)) for isa in args.isas.split(",")]
    runs = {}
    for isa, data in datas:
        context, times = medians(data)
        # A cap above this CPU's best runs its best: measured once.
        runs.setdefault(context.get("bn2d_max_cpu_isa", isa), (context, times))
    lines = ["CPU strategy thresholds: ours_fused and ours_split, float32 NCHW, medians of %d "
             "interleaved repetitions; time / floor (floor: the lower of streaming and "
             "ordinary stores)." % args.repetitions, ""]
    chosen = {}
    for op, tail, kernel, knob in THRESHOLDS:
        key = "runtime.%s.%s" % (kernel, knob)
        shapes = sorted({s for (o, i, s, t) in next(iter(runs.values()))[1]
                         if o == op and t == tail}, key=lambda s: (plane(s), s))
        lines += ["### %s (%s)" % (kernel, "no residual" if tail == "none" else tail), "",
                  "| shape | plane | " + " | ".join(
                      "%s fused/floor | %s split/floor | %s split/fused" % (i, i, i)
                      for i in runs) + " | split wins |",
                  "|---|---:|" + "---:|---:|---:|" * len(runs) + "---|"]
        wins = []
        for s in shapes:
            cells, won = [], True
            for isa, (_, t) in runs.items():
                f, sp = t.get((op, "ours_fused", s, tail)), t.get((op, "ours_split", s, tail))
                fl = min(v for v in (t.get((op, "floor", s, tail)), t.get((op, "bound", s, tail)))
                         if v)
                if f is None or sp is None:
                    won = False
                    cells.append("- | - | -")
                    continue
                won = won and sp < f
                cells.append("%.2f | %.2f | %.2f" % (f / fl, sp / fl, sp / f))
            wins.append((plane(s), won))
            lines.append("| %s | %d | %s | %s |" % (s, plane(s), " | ".join(cells),
                                                    "yes" if won else "no"))
        # The largest plane at or below which split won on every shape and ISA.
        limit = 0
        for p in sorted({q for q, _ in wins}):
            if not all(w for q, w in wins if q <= p):
                break
            limit = p
        chosen[key] = limit
        lines += ["", "%s = %d" % (key, limit), ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)
    if args.dry_run:
        return
    with open(args.params) as f:
        content = f.read()
    for key, limit in chosen.items():
        line = "%s = %d" % (key, limit)
        pattern = re.compile(r"^\s*" + re.escape(key) + r"\s*=.*$", re.M)
        content = pattern.sub(line, content) if pattern.search(content) else \
            content.rstrip("\n") + "\n" + line + "\n"
    with open(args.params, "w") as f:
        f.write(content)
    print("tune_strategy: wrote %s" % args.params, file=sys.stderr)


if __name__ == "__main__":
    main()
