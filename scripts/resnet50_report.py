#!/usr/bin/env python3
"""ResNet-50's batch-norm layers (bench/resnet50.h) from Google Benchmark JSON of bench/bn2d_bench:
the batch-norm time of one training step (forward + backward of all 53 layers, each with its
ReLU or add + ReLU) and of one inference pass (eval forward), per layout, ours against oneDNN,
libtorch and the floor; then each layer kind.

Benchmark names read resnet50/<op>/<impl>/<shape>/<tail>; the `layers` counter is how many
layers of that kind the network has. Times are medians over repetitions (else means).
The floor of a layer is the lower of `floor` (streaming stores) and `bound` (ordinary stores):
beyond the last-level cache streaming stores move the least, in it ordinary stores do.

  scripts/resnet50_report.py out/bench.json [--markdown-out FILE]
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import TO_MS, preferred_samples, sample_kind  # noqa: E402

OPS = ["train_fwd", "bwd", "eval_fwd"]
LAYOUTS = {  # layout -> (ours, peers)
    "NCHW": ("ours", ["onednn_nchw", "torch"]),
    "NHWC": ("ours_nhwc", ["onednn_nhwc", "torch_nhwc"]),
}
PEER_NAMES = {"onednn_nchw": "oneDNN", "onednn_nhwc": "oneDNN", "torch": "libtorch",
              "torch_nhwc": "libtorch"}


def load(path):
    """{(op, impl, shape, tail): ms}, {(shape, tail): count}, {(op, impl, shape, tail): label}."""
    with open(path) as f:
        data = json.load(f)
    found = defaultdict(lambda: defaultdict(list))
    counts, labels = {}, {}
    for b in data.get("benchmarks", []):
        parts = b.get("run_name", b["name"]).split("/")
        if len(parts) < 5 or parts[0] != "resnet50":
            continue
        if b.get("error_occurred"):
            print("skipped (error): {}: {}".format(b["name"], b.get("error_message", "")),
                  file=sys.stderr)
            continue
        key = tuple(parts[1:5])
        kind = sample_kind(b)
        if kind is None:
            continue
        found[key][kind].append(b["real_time"] * TO_MS[b.get("time_unit", "ns")])
        if "layers" in b:
            counts[key[2:]] = int(round(b["layers"]))
        if b.get("label"):
            labels[key] = b["label"]
    times = {key: sum(vals) / len(vals) for key, vals in preferred_samples(found).items()}
    return data.get("context", {}), times, counts, labels


def fmt(ms):
    return "-" if ms is None else "{:.3f}".format(ms)


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else "{:.2f}".format(a / b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--markdown-out")
    args = ap.parse_args()
    context, times, counts, labels = load(args.json)
    if not counts:
        sys.exit("no resnet50/ benchmarks in " + args.json)
    layers = sorted(counts, key=lambda k: (-int(k[0].split("x")[2]), k[0], k[1]))

    def t(op, impl, layer):
        return times.get((op, impl) + layer)

    def floor(op, layer):
        vals = [v for v in (t(op, "floor", layer), t(op, "bound", layer)) if v is not None]
        return min(vals) if vals else None

    def total(ops, impl):
        """Sum over the network of count x time; None if any layer is missing."""
        s = 0.0
        for layer in layers:
            for op in ops:
                v = floor(op, layer) if impl == "floor" else t(op, impl, layer)
                if v is None:
                    return None
                s += counts[layer] * v
        return s

    out = []
    out.append("ResNet-50 batch-norm layers, batch 32, float32: {} layers in {} kinds; {} "
               "threads, ours on {} (machine file `{}`){}.".format(
                   sum(counts.values()), len(layers), context.get("bn2d_threads", "?"),
                   context.get("bn2d_max_cpu_isa", "?"),
                   context.get("bn2d_schedule_machine", "?"),
                   ", oneDNN " + context["onednn_version"] if "onednn_version" in context
                   else ""))
    out.append("")
    out.append("| per network | layout | ours ms | oneDNN ms | libtorch ms | floor ms | "
               "ours/floor | best peer/ours |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for what, ops in (("training step (fwd + bwd)", ["train_fwd", "bwd"]),
                      ("inference (eval fwd)", ["eval_fwd"])):
        for layout, (ours, peers) in LAYOUTS.items():
            o = total(ops, ours)
            p = [total(ops, peer) for peer in peers]
            best = min([v for v in p if v is not None], default=None)
            f = total(ops, "floor")
            summary[(what, layout)] = (o, best, f)
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                what, layout, fmt(o), fmt(p[0]), fmt(p[1]), fmt(f), ratio(o, f),
                ratio(best, o)))
    fused, split = total(["train_fwd", "bwd"], "ours_fused"), total(["train_fwd", "bwd"],
                                                                      "ours_split")
    if fused and split:
        ours = summary[("training step (fwd + bwd)", "NCHW")][0]
        out.append("")
        out.append("NCHW training step under one CPU strategy for every layer: fused {} ms, split "
                   "{} ms; the automatic choice {} ms ({} the fused-only time).".format(
                       fmt(fused), fmt(split), fmt(ours), ratio(ours, fused) + "x"))
    out.append("")
    out.append("Each kind of layer (ms per layer; floor = min(streaming floor, ordinary-store "
               "bound), both also shown; strategy: what ours ran in NCHW):")
    out.append("")
    out.append("| shape | tail | layers | op | ours | strategy | ours/floor | ours_nhwc/floor | "
               "best peer | best peer/ours | floor | bound |")
    out.append("|---|---|---:|---|---:|---|---:|---:|---|---:|---:|---:|")
    geo = []
    for layer in layers:
        for op in OPS:
            o, on = t(op, "ours", layer), t(op, "ours_nhwc", layer)
            f = floor(op, layer)
            peers = {impl: t(op, impl, layer) for impl in ["onednn_nchw", "onednn_nhwc", "torch",
                                                          "torch_nhwc"]}
            peers = {k: v for k, v in peers.items() if v is not None}
            best_impl = min(peers, key=peers.get) if peers else None
            ours_best = min([v for v in (o, on) if v is not None], default=None)
            if best_impl and ours_best:
                geo.append(peers[best_impl] / ours_best)
            label = labels.get((op, "ours") + layer, "")
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                layer[0], layer[1], counts[layer], op, fmt(o), label.split(" ")[-1] if label
                else "", ratio(o, f), ratio(on, f),
                "{} {}".format(best_impl, fmt(peers[best_impl])) if best_impl else "-",
                ratio(peers[best_impl], ours_best) if best_impl else "-",
                fmt(t(op, "floor", layer)), fmt(t(op, "bound", layer))))
    if geo:
        out.append("")
        out.append("Geometric mean over the rows of best peer / our best layout: {:.2f} ({} "
                   "rows, {} where a peer is faster).".format(
                       math.exp(sum(math.log(g) for g in geo) / len(geo)), len(geo),
                       sum(1 for g in geo if g < 1.0)))
    text = "\n".join(out) + "\n"
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
