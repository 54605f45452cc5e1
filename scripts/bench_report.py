#!/usr/bin/env python3
"""Turns Google Benchmark JSON (bench/bn2d_bench or bench/gpu/bn2d_bench_gpu) into a table:
shape x op with ours, the bound, the best peer, and the ratios, plus a PNG plot of achieved
bandwidth when matplotlib is available.

Benchmark names read op/impl/shape[/...]. Medians are used when the run has repetitions
(--benchmark_repetitions=N); otherwise the single run's time.

  scripts/bench_report.py out/bench.json [--markdown-out FILE] [--png FILE]
      [--ours ours] [--bound-name bound] [--peers onednn_nchw,onednn_nhwc,torch]
"""
import argparse
import json
import sys
from collections import defaultdict

OPS = ["train_fwd", "eval_fwd", "bwd"]
# bench/suite.h's order; shapes not in it follow in the order first seen.
SUITE = ["20x100x35x45", "32x64x112x112", "32x256x56x56", "32x512x28x28", "32x2048x7x7",
         "1x3x1080x1920"]


def load(path):
    with open(path) as f:
        data = json.load(f)
    times = {}  # (op, impl, shape) -> (ms, bytes_per_second)
    have_median = any(b.get("aggregate_name") == "median" for b in data["benchmarks"])
    for b in data["benchmarks"]:
        if b.get("error_occurred"):
            continue
        if have_median and b.get("aggregate_name") != "median":
            continue
        parts = b.get("run_name", b["name"]).split("/")
        if len(parts) < 3:
            continue
        op, impl, shape = parts[0], parts[1], parts[2]
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
        times[(op, impl, shape)] = (b["real_time"] * scale, b.get("bytes_per_second", 0.0))
    return data.get("context", {}), times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--markdown-out")
    ap.add_argument("--png")
    ap.add_argument("--ours", default="ours")
    ap.add_argument("--bound-name", default="bound")
    ap.add_argument("--peers", default="onednn_nchw,onednn_nhwc,torch")
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]

    context, times = load(args.json)
    seen = [shape for (_, _, shape) in times]
    shapes = [s for s in SUITE if s in seen]
    for shape in seen:
        if shape not in shapes:
            shapes.append(shape)

    rows = ["| shape | op | ours ms | bound ms | ours/bound | best peer | peer ms | peer/ours |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for shape in shapes:
        for op in OPS:
            ours = times.get((op, args.ours, shape))
            bound = times.get((op, args.bound_name, shape))
            if not ours:
                continue
            cands = [(times[(op, p, shape)][0], p) for p in peers if (op, p, shape) in times]
            best = min(cands) if cands else None
            rows.append("| {} | {} | {:.3f} | {} | {} | {} | {} | {} |".format(
                shape, op, ours[0],
                "{:.3f}".format(bound[0]) if bound else "-",
                "{:.2f}x".format(ours[0] / bound[0]) if bound else "-",
                best[1] if best else "-",
                "{:.3f}".format(best[0]) if best else "-",
                "{:.2f}x".format(best[0] / ours[0]) if best else "-"))
    header = "Machine: {} CPUs @ {} MHz; {}; date {}".format(
        context.get("num_cpus", "?"), context.get("mhz_per_cpu", "?"),
        context.get("host_name", ""), context.get("date", "?"))
    text = header + "\n\n" + "\n".join(rows) + "\n"
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)

    if args.png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not available: no plot (pip install matplotlib)", file=sys.stderr)
            return
        impls = [args.ours, args.bound_name] + peers
        fig, axes = plt.subplots(1, len(OPS), figsize=(6 * len(OPS), 5), sharey=True)
        for ax, op in zip(axes, OPS):
            width = 0.8 / len(impls)
            for k, impl in enumerate(impls):
                vals = [times.get((op, impl, s), (0, 0))[1] / 1e9 for s in shapes]
                ax.bar([i + k * width for i in range(len(shapes))], vals, width, label=impl)
            ax.set_title(op)
            ax.set_xticks([i + 0.4 for i in range(len(shapes))])
            ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("GB/s (bytes the op must move)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print("plot:", args.png)


if __name__ == "__main__":
    main()
