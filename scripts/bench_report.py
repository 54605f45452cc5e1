#!/usr/bin/env python3
"""Turns Google Benchmark JSON (bench/bn2d_bench, or bench/gpu/bn2d_bench_gpu) into a markdown
table, shape x op: ours (ms), the best peer (name, ms), the streaming bound (ms), ours/bound and
best_peer/ours; and a PNG plot of achieved bandwidth (GB/s) per shape, op and implementation
when matplotlib can be imported (the table needs only the standard library).

Benchmark names read op/impl/shape[/...], e.g. train_fwd/ours/20x100x35x45/real_time.
Times: the median aggregate when the run has one (--benchmark_repetitions=N), else the mean
aggregate, else the mean over the iteration runs of that name.
Peers: every implementation in the file other than ours and the bound (or --peers).
floor_min: made here per row, the lower of `floor` (streaming stores) and `bound` (ordinary).

  scripts/bench_report.py out/bench.json [--markdown-out FILE] [--png FILE | --no-plot]
      [--ours ours] [--bound-name bound] [--peers onednn_nchw,onednn_nhwc,torch,naive]
"""
import argparse
import json
import os
import sys
from collections import defaultdict

OPS = ["train_fwd", "eval_fwd", "bwd"]
# bench/suite.h's order; shapes not in it follow in the order first seen.
SUITE = ["20x100x35x45", "32x64x112x112", "32x256x56x56", "32x512x28x28", "32x2048x7x7",
         "1x3x1080x1920"]
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def sample_kind(b):
    """A benchmark's kind of sample: 'median' or 'mean' (time aggregates), 'iteration' (a plain
    run), or None (other aggregates: skipped)."""
    if b.get("run_type") != "aggregate":
        return "iteration"
    kind = b.get("aggregate_name")
    return kind if kind in ("median", "mean") and b.get("aggregate_unit", "time") == "time" \
        else None


def preferred_samples(found):
    """{key: {kind: [samples]}} -> {key: [samples]}: the medians, else the means, else the runs."""
    return {key: kinds.get("median") or kinds.get("mean") or kinds.get("iteration")
            for key, kinds in found.items()}


def load(path):
    """Returns (context, {(op, impl, shape): (ms, bytes_per_second)}, impls in order seen)."""
    with open(path) as f:
        data = json.load(f)
    # key -> {"median": [...], "mean": [...], "iteration": [...]} of (ms, B/s)
    found = defaultdict(lambda: defaultdict(list))
    order = []
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            print("skipped (error): {}: {}".format(b.get("name"), b.get("error_message", "")),
                  file=sys.stderr)
            continue
        parts = b.get("run_name", b["name"]).split("/")
        if len(parts) < 3 or parts[0] == "resnet50":  # scripts/resnet50_report.py's
            continue
        key = (parts[0], parts[1], parts[2])
        kind = sample_kind(b)
        if kind is None:
            continue
        ms = b["real_time"] * TO_MS[b.get("time_unit", "ns")]
        found[key][kind].append((ms, b.get("bytes_per_second", 0.0)))
        if key[1] not in order:
            order.append(key[1])
    times = {}
    for key, vals in preferred_samples(found).items():
        times[key] = (sum(v[0] for v in vals) / len(vals), sum(v[1] for v in vals) / len(vals))
    # The floor a row is held to: the lower of the streaming-store floor and the ordinary-store
    # bound (in cache, ordinary stores move the bytes faster).
    for (op, impl, shape) in list(times):
        if impl == "floor" and (op, "bound", shape) in times:
            times[(op, "floor_min", shape)] = min(times[(op, "floor", shape)],
                                                  times[(op, "bound", shape)])
    return data.get("context", {}), times, order


def fmt(v, spec="{:.3f}"):
    return spec.format(v) if v is not None else "-"


def ops_of(times):
    """The ops present: the plain ones first, then the fused ones in the order seen."""
    seen = []
    for (op, _, _) in times:
        if op not in seen:
            seen.append(op)
    return [o for o in OPS if o in seen] + [o for o in seen if o not in OPS]


def table(context, times, shapes, ours, bound, peers, columns=()):
    """columns: implementations shown in columns of their own, as ms and their time / ours."""
    extra_head = "".join(" {0} ms | {0}/ours |".format(c) for c in columns)
    rows = ["| shape | op | ours ms | best peer | peer ms | {0} ms | ours/{0} | peer/ours |".format(
                bound) + extra_head,
            "|---|---|---:|---|---:|---:|---:|---:|" + "---:|---:|" * len(columns)]
    for shape in shapes:
        for op in ops_of(times):
            o = times.get((op, ours, shape))
            if not o:
                continue
            bd = times.get((op, bound, shape))
            cands = [(times[(op, p, shape)][0], p) for p in peers if (op, p, shape) in times]
            best = min(cands) if cands else None
            # The bound moves the op's bytes with the least work: anything faster than it was
            # measured while the machine (shared memory bandwidth) was in a better state.
            beaten = bd and min([o[0]] + [c[0] for c in cands]) < bd[0]
            extra = ""
            for c in columns:
                t = times.get((op, c, shape))
                extra += " {} | {} |".format(fmt(t[0] if t else None),
                                             fmt(t[0] / o[0] if t else None, "{:.2f}x"))
            rows.append("| {} | {} | {} | {} | {} | {}{} | {} | {} |".format(
                shape, op, fmt(o[0]),
                best[1] if best else "-",
                fmt(best[0] if best else None),
                fmt(bd[0] if bd else None), " *" if beaten else "",
                fmt(o[0] / bd[0] if bd else None, "{:.2f}x"),
                fmt(best[0] / o[0] if best else None, "{:.2f}x")) + extra)
    header = "Machine: {} CPUs @ {} MHz; host {}; date {}; threads {}".format(
        context.get("num_cpus", "?"), context.get("mhz_per_cpu", "?"),
        context.get("host_name", "?"), context.get("date", "?"),
        context.get("bn2d_threads", "?"))
    legend = ("Times in ms ({{}}). ours/{0}: how far ours is from streaming the op's bytes "
              "(1.00x = at the {0}); peer/ours > 1: ours is faster than the best peer.").format(bound)
    stat = "medians" if context.get("_has_median") else "means"
    text = header + "\n\n" + legend.format(stat) + "\n\n" + "\n".join(rows) + "\n"
    if any(" *" in r for r in rows):
        text += ("\n\\* an implementation beat the " + bound + " here: it was measured "
                 "at a moment of lower memory bandwidth (noisy machine); rerun, or use "
                 "--benchmark_enable_random_interleaving=true with more repetitions.\n")
    return text


def plot(path, times, shapes, impls):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot written (pip install matplotlib)",
              file=sys.stderr)
        return
    ops = ops_of(times)
    fig, axes = plt.subplots(1, len(ops), figsize=(6 * len(ops), 5), sharey=True, squeeze=False)
    axes = axes[0]
    width = 0.8 / max(1, len(impls))
    for ax, op in zip(axes, ops):
        for k, impl in enumerate(impls):
            vals = [times.get((op, impl, s), (0.0, 0.0))[1] / 1e9 for s in shapes]
            ax.bar([i + k * width for i in range(len(shapes))], vals, width, label=impl)
        ax.set_title(op)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("achieved GB/s (bytes the op must move)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("plot: " + path, file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="Google Benchmark output (--benchmark_out_format=json)")
    ap.add_argument("--markdown-out", metavar="FILE", help="also write the table here")
    ap.add_argument("--png", metavar="FILE",
                    help="bandwidth plot (default: <json without .json>_bandwidth.png)")
    ap.add_argument("--no-plot", action="store_true", help="write no plot")
    ap.add_argument("--ours", default="ours")
    ap.add_argument("--bound-name", default="bound")
    ap.add_argument("--peers", help="comma-separated; default: every other implementation")
    ap.add_argument("--columns", default="",
                    help="comma-separated implementations shown in columns of their own "
                         "(e.g. ours_unfused): ms and their time / ours")
    args = ap.parse_args()

    context, times, order = load(args.json)
    if not times:
        sys.exit("no benchmark results in " + args.json)
    with open(args.json) as f:
        context["_has_median"] = any(b.get("aggregate_name") == "median"
                                     for b in json.load(f).get("benchmarks", []))
    if args.peers is not None:
        peers = [p for p in args.peers.split(",") if p]
    else:
        peers = [i for i in order if i not in (args.ours, args.bound_name)]
    seen = []
    for (_, _, shape) in times:
        if shape not in seen:
            seen.append(shape)
    shapes = [s for s in SUITE if s in seen] + [s for s in seen if s not in SUITE]

    columns = [c for c in args.columns.split(",") if c]
    text = table(context, times, shapes, args.ours, args.bound_name, peers, columns)
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)
    if not args.no_plot:
        png = args.png or os.path.splitext(args.json)[0] + "_bandwidth.png"
        impls = [i for i in [args.ours, args.bound_name] + peers + columns if i in order]
        plot(png, times, shapes, impls)


if __name__ == "__main__":
    main()
