#!/usr/bin/env python3
"""Tunes the CPU strategy thresholds (bn2d::CpuStrategy): for each ISA asked, runs the benchmark's
ours_fused and ours_split (NCHW float32 training forward and backward, the suite's shapes and
ResNet-50's layers) in one interleaved run, and sets each threshold in a machine file to the
largest value at or below which split wins on every shape and every ISA measured, from the
calls each threshold governs: runtime.<op>.split_max_plane (the plane, H*W; forward: the calls
without a residual, backward: all), runtime.train_fwd.split_max_plane_add (ResNet-50's
forward_add layers, add + ReLU), and runtime.<op>.split_max_cache_percent (the bytes the call
moves, in percent of the last-level cache the benchmark reports; the calls the plane threshold
leaves fused). Writes a report: per shape and op, each strategy's time / floor (the lower of the
streaming floor and the ordinary-store bound) and the choice.

  scripts/tune_strategy.py --bench build/bench/bn2d_bench --isas avx512,avx2 \\
      --params schedules/machines/default.params [--markdown-out FILE] [--repetitions N]
  scripts/tune_strategy.py --from-json run_avx512.json,run_avx2.json --params FILE

The machine file is rewritten in place: the runtime.* lines replaced (or appended), every other
line kept. --dry-run reports without writing it.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

# The thresholds: (benchmark op, the tails of the calls it governs, machine-file kernel, knob).
# The suite's shapes have no tail ("none"); backward_add runs the batch norm's backward on the
# residual's gradient, by backward's thresholds. Tuned in this order: a cache threshold counts
# the shapes its op's plane threshold leaves fused. (forward_add calls also obey forward's cache
# threshold, but split_max_plane_add already splits every ResNet-50 add + ReLU layer.)
THRESHOLDS = [("train_fwd", ("none", "relu"), "train_fwd", "split_max_plane"),
              ("bwd", ("none", "relu", "add_relu"), "train_bwd", "split_max_plane"),
              ("train_fwd", ("add_relu",), "train_fwd", "split_max_plane_add"),
              ("train_fwd", ("none", "relu"), "train_fwd", "split_max_cache_percent"),
              ("bwd", ("none", "relu", "add_relu"), "train_bwd", "split_max_cache_percent")]
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
IMPLS = "(ours_fused|ours_split|floor|bound)"
FILTER = (r"^(train_fwd|bwd)/" + IMPLS + r"/[0-9x]+/real_time|^resnet50/(train_fwd|bwd)/" + IMPLS +
          r"/[0-9x]+/(none|relu|add_relu)/")
MIN_CHANNELS = 16  # the runtime's: fewer channels always run fused


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


def channels(shape):
    return int(shape.split("x")[1])


def cache_percent(op, shape, tail, llc_bytes):
    """The bytes a float32 call moves, in percent of the last-level cache, counted as the
    runtime's rule counts them: forward x and y (+ z when it adds a residual); backward x,
    grad_out and grad_input (+ y when it passes a ReLU; backward_add's batch-norm backward
    reads the residual's gradient, already through the ReLU)."""
    n, c, h, w = (int(v) for v in shape.split("x"))
    tensors = (3 if tail == "add_relu" else 2) if op == "train_fwd" else \
        (4 if tail == "relu" else 3)
    return 100.0 * n * c * h * w * 4 * tensors / llc_bytes


def last_level_cache(context):
    """The largest cache Google Benchmark's context lists (bytes), or None."""
    sizes = [c.get("size", 0) for c in context.get("caches", [])]
    return max(sizes) if sizes else None


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
    llc = {last_level_cache(context) for context, _ in runs.values()}
    if len(llc) != 1 or None in llc:
        sys.exit("tune_strategy: the runs do not report one last-level cache size: %s" % llc)
    llc = llc.pop()
    chosen = {}
    for op, tails, kernel, knob in THRESHOLDS:
        key = "runtime.%s.%s" % (kernel, knob)
        by_cache = knob == "split_max_cache_percent"
        plane_limit = chosen.get("runtime.%s.split_max_plane" % kernel, 0)

        def measure(s, t):
            return cache_percent(op, s, t, llc) if by_cache else plane(s)

        shapes = sorted({(s, t) for (o, i, s, t) in next(iter(runs.values()))[1]
                         if o == op and t in tails and channels(s) >= MIN_CHANNELS and
                         not (by_cache and plane(s) <= plane_limit)},
                        key=lambda st: (measure(*st), st))
        title = "/".join(tails)
        what = "%% of the %.0f MiB cache" % (llc / 2**20) if by_cache else "plane"
        lines += ["### %s (%s)" % (kernel, title), "",
                  "| shape | tail | %s | " % what + " | ".join(
                      "%s fused/floor | %s split/floor | %s split/fused" % (i, i, i)
                      for i in runs) + " | split wins |",
                  "|---|---|---:|" + "---:|---:|---:|" * len(runs) + "---|"]
        wins = []
        for s, tail in shapes:
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
            wins.append((measure(s, tail), won))
            lines.append("| %s | %s | %.0f | %s | %s |" % (s, tail, measure(s, tail),
                                                          " | ".join(cells), "yes" if won else "no"))
        # The largest value at or below which split won on every shape and ISA (a percent:
        # rounded up, so that the shape itself splits).
        limit = 0
        for p in sorted({q for q, _ in wins}):
            if not all(w for q, w in wins if q <= p):
                break
            limit = math.ceil(p)
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
