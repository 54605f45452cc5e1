#!/usr/bin/env python3
"""bn2d.torch.BatchNorm2d against torch.nn.BatchNorm2d, from Python, in one interleaved run:

  suite     forward + backward of the module on the problem list's suite shapes
  resnet50  forward + backward of ResNet-50's 53 batch-norm layers (batch 32), NCHW and
            channels_last, summed by layer count: the batch-norm time of one training step
  overhead  one forward + backward call on a tiny tensor (2x4x2x2): the per-call cost of the
            front end (autograd Function, descriptors, validation)
  resnet18  one training step of torchvision's ResNet-18 with each module, and with the batch
            norms removed (nn.Identity): the batch norms' share of the step, by difference

Each measurement is the median over --reps repetitions, taken round-robin over the
implementations so that a noisy neighbour hits them alike; ratios are torch / bn2d. Both
libraries run the same number of threads (--threads, default: every CPU).

    .venv-python/bin/python bench/python/bench_torch.py --out bench/results/python_<machine>
"""
import argparse
import copy
import json
import os
import pathlib
import re
import statistics
import time

import torch
from torch import nn

import bn2d
import bn2d.torch as bt

ROOT = pathlib.Path(__file__).resolve().parents[2]


def resnet50_layers():
    """[(shape, count)] of ResNet-50's batch-norm layer kinds, read from the C++ benchmark's
    list (bench/resnet50.h) so that both benchmarks measure the same network. Kinds that differ
    only in their tail (ReLU, add + ReLU, none) are one here: the module is the batch norm."""
    text = (ROOT / "bench" / "resnet50.h").read_text()
    kinds = {}
    for m in re.finditer(r"\{\{(\d+), (\d+), (\d+), (\d+)\}, (\d+), T::\w+\}", text):
        shape = tuple(int(v) for v in m.groups()[:4])
        kinds[shape] = kinds.get(shape, 0) + int(m.group(5))
    return list(kinds.items())


def suite_shapes():
    shapes = []
    for line in (ROOT / "tests" / "problems.txt").read_text().splitlines():
        fields = line.split("#")[0].split()
        if len(fields) > 1 and "suite" in fields[1:]:
            n, rest = fields[0][2:].split("ic")
            c, rest = rest.split("ih")
            h, w = rest.split("iw")
            shapes.append((int(n), int(c), int(h), int(w)))
    return shapes


def timed(fn, min_seconds):
    """Seconds per call of fn, over as many calls as fill min_seconds (at least one)."""
    fn()  # warm: allocations, first-touch
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def interleaved(cases, reps, min_seconds):
    """{name: median seconds} of each (name, fn) in cases, repetitions round-robin."""
    samples = {name: [] for name, _ in cases}
    for _ in range(reps):
        for name, fn in cases:
            samples[name].append(timed(fn, min_seconds))
    return {name: statistics.median(v) for name, v in samples.items()}


def module_step(module, shape, channels_last):
    """A forward + backward of one module on fresh random data, as autograd runs it."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(shape).contiguous(memory_format=fmt)

    def step():
        x.grad = None
        module(x).backward(grad)
    return step


def bn_pair(channels):
    ref = nn.BatchNorm2d(channels)
    return ref, bt.convert(copy.deepcopy(ref))


def bench_modules(shapes, layouts, reps, min_seconds):
    rows = []
    for shape in shapes:
        for channels_last in layouts:
            ref, ours = bn_pair(shape[1])
            t = interleaved([("torch", module_step(ref, shape, channels_last)),
                             ("bn2d", module_step(ours, shape, channels_last))],
                            reps, min_seconds)
            rows.append({"shape": list(shape),
                         "layout": "channels_last" if channels_last else "nchw",
                         "torch_ms": t["torch"] * 1e3, "bn2d_ms": t["bn2d"] * 1e3})
            print(f"  {rows[-1]['layout']:>13} {'x'.join(map(str, shape)):>16}: torch "
                  f"{rows[-1]['torch_ms']:9.3f} ms  bn2d {rows[-1]['bn2d_ms']:9.3f} ms  "
                  f"x{t['torch'] / t['bn2d']:.2f}", flush=True)
    return rows


def bench_overhead(reps):
    shape = (2, 4, 2, 2)
    ref, ours = bn_pair(4)
    ref_eval, ours_eval = copy.deepcopy(ref).eval(), copy.deepcopy(ours).eval()
    x = torch.randn(shape)

    def inference(module):
        def call():
            with torch.no_grad():
                module(x)
        return call
    cases = [("torch", module_step(ref, shape, False)), ("bn2d", module_step(ours, shape, False)),
             ("torch_inference", inference(ref_eval)), ("bn2d_inference", inference(ours_eval))]
    t = interleaved(cases, reps, 0.2)
    return {k: v * 1e6 for k, v in t.items()}  # microseconds


def bench_resnet18(reps, batch, size):
    import torchvision
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None)
    models = {"torch": base, "bn2d": bt.convert(copy.deepcopy(base)),
              "no_bn": copy.deepcopy(base)}
    for name, m in list(models["no_bn"].named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, child_name, nn.Identity())
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    cases = []
    for name, model in models.items():
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, opt=opt):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), target).backward()
            opt.step()
        cases.append((name, step))
    t = interleaved(cases, reps, 0.0)
    return {k: v * 1e3 for k, v in t.items()}  # milliseconds


def markdown(result):
    lines = [f"# bn2d from Python: bn2d.torch.BatchNorm2d vs torch.nn.BatchNorm2d",
             "",
             f"Machine: {result['machine']}; torch {result['torch']} (Debian), bn2d "
             f"{result['bn2d_isa']} kernels, {result['threads']} threads each; medians of "
             f"{result['reps']} interleaved repetitions. Ratio: torch / bn2d (above 1: bn2d "
             "faster). Times are a module's forward + backward as autograd runs it.",
             ""]
    r = result["resnet50"]
    lines += ["## ResNet-50's batch-norm layers (batch 32, one training step)", "",
              "| layout | torch (ms) | bn2d (ms) | ratio |", "|---|---:|---:|---:|"]
    for layout in ("nchw", "channels_last"):
        rows = [x for x in r if x["layout"] == layout]
        if rows:
            tt = sum(x["torch_ms"] * x["count"] for x in rows)
            tb = sum(x["bn2d_ms"] * x["count"] for x in rows)
            lines.append(f"| {layout} | {tt:.1f} | {tb:.1f} | {tt / tb:.2f} |")
    lines += ["", "Per layer kind (count x shape):", "",
              "| layout | shape | count | torch (ms) | bn2d (ms) | ratio |",
              "|---|---|---:|---:|---:|---:|"]
    for x in r:
        lines.append(f"| {x['layout']} | {'x'.join(map(str, x['shape']))} | {x['count']} | "
                     f"{x['torch_ms']:.3f} | {x['bn2d_ms']:.3f} | "
                     f"{x['torch_ms'] / x['bn2d_ms']:.2f} |")
    lines += ["", "## Suite shapes (those not in ResNet-50's list)", "", "| layout | shape | torch (ms) | bn2d (ms) | ratio |",
              "|---|---|---:|---:|---:|"]
    for x in result["suite"]:
        lines.append(f"| {x['layout']} | {'x'.join(map(str, x['shape']))} | "
                     f"{x['torch_ms']:.3f} | {x['bn2d_ms']:.3f} | "
                     f"{x['torch_ms'] / x['bn2d_ms']:.2f} |")
    o = result["overhead_us"]
    lines += ["", "## Per-call overhead (2x4x2x2)", "",
              "| call | torch (us) | bn2d (us) | bn2d - torch (us) |", "|---|---:|---:|---:|",
              f"| training forward + backward | {o['torch']:.1f} | {o['bn2d']:.1f} | "
              f"{o['bn2d'] - o['torch']:+.1f} |",
              f"| inference forward (no_grad) | {o['torch_inference']:.1f} | "
              f"{o['bn2d_inference']:.1f} | {o['bn2d_inference'] - o['torch_inference']:+.1f} |"]
    s = result["resnet18"]
    share_t, share_b = s["torch"] - s["no_bn"], s["bn2d"] - s["no_bn"]
    lines += ["", f"## ResNet-18 training step (batch {result['resnet18_batch']}, "
              f"{result['resnet18_size']}x{result['resnet18_size']}, SGD)", "",
              "| model | step (ms) | batch-norm share (ms, by difference) |", "|---|---:|---:|",
              f"| torch.nn.BatchNorm2d | {s['torch']:.1f} | {share_t:.1f} |",
              f"| bn2d.torch.BatchNorm2d | {s['bn2d']:.1f} | {share_b:.1f} |",
              f"| no batch norm (nn.Identity) | {s['no_bn']:.1f} | |", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.1,
                   help="each sample times calls for at least this long")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--only", nargs="*", default=["suite", "resnet50", "overhead", "resnet18"])
    p.add_argument("--resnet18-batch", type=int, default=32)
    p.add_argument("--resnet18-size", type=int, default=224)
    p.add_argument("--machine", default=os.environ.get("BN2D_MACHINE", "this machine"))
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bn2d.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"machine": args.machine, "torch": torch.__version__, "threads": args.threads,
              "bn2d_isa": bn2d.max_cpu_isa(), "reps": args.reps,
              "resnet18_batch": args.resnet18_batch, "resnet18_size": args.resnet18_size}
    if "resnet50" in args.only:
        print("ResNet-50 batch-norm layers:")
        layers = resnet50_layers()
        assert sum(count for _, count in layers) == 53, "bench/resnet50.h changed its format"
        rows = bench_modules([shape for shape, _ in layers], (False, True), args.reps,
                             args.min_seconds)
        for i, row in enumerate(rows):
            row["count"] = layers[i // 2][1]
        result["resnet50"] = rows
    if "suite" in args.only:
        print("Suite shapes:")
        in_resnet50 = {shape for shape, _ in resnet50_layers()}
        result["suite"] = bench_modules([s for s in suite_shapes() if s not in in_resnet50],
                                        (False, True), args.reps, args.min_seconds)
    if "overhead" in args.only:
        result["overhead_us"] = bench_overhead(args.reps)
        print("Overhead (us):", result["overhead_us"])
    if "resnet18" in args.only:
        result["resnet18"] = bench_resnet18(args.reps, args.resnet18_batch, args.resnet18_size)
        print("ResNet-18 step (ms):", result["resnet18"])
    if args.out and set(args.only) >= {"suite", "resnet50", "overhead", "resnet18"}:
        pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=1))
        pathlib.Path(args.out + ".md").write_text(markdown(result))
        print("wrote", args.out + ".md")


if __name__ == "__main__":
    main()
