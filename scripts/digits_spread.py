#!/usr/bin/env python3
"""Measures the spread python/tests/test_digits.py's bounds come from: for many fresh seeds, the
digits training run (examples/python/train_digits.py, 8 epochs) with PyTorch's batch norm,
with bn2d's, and with PyTorch's again from initial weights scaled by 1 + 2^-22 (a change at
float32 rounding level: the chaos of float32 training itself, with no bn2d in it). Prints, for
each pair against the PyTorch run, the distribution of the test accuracy gap (in test images),
of the largest per-epoch loss gap and of the first epoch's (both relative to the first epoch's
loss), as a markdown report.

    OMP_NUM_THREADS=1 .venv-python/bin/python scripts/digits_spread.py --seeds 250 \\
        --jsonl out/digits_spread.jsonl --markdown-out out/digits_spread.md
"""
import argparse
import copy
import json
import pathlib
import random
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "python"))
import train_digits as td  # noqa: E402  (the example the test runs)

EPOCHS = 8  # as the test


def one_seed(seed):
    import bn2d.torch
    data = td.digits(seed)
    torch.manual_seed(seed)
    reference = td.cnn()
    converted = bn2d.torch.convert(copy.deepcopy(reference))
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.mul_(1 + 2.0 ** -22)
    runs = {name: td.train(model, data, EPOCHS, seed) for name, model in
            (("torch", reference), ("bn2d", converted), ("torch_perturbed", perturbed))}
    return {"seed": seed, "images": len(data[1][1]),
            **{name: {"curve": r[0], "accuracy": r[1]} for name, r in runs.items()}}


def gaps(row, other):
    t, o = row["torch"], row[other]
    first = t["curve"][0]
    return (round(abs(o["accuracy"] - t["accuracy"]) * row["images"] / 100),
            max(abs(a - b) for a, b in zip(t["curve"], o["curve"])) / first,
            abs(o["curve"][0] - first) / first)


def report(rows):
    out = ["Digits training (8 epochs), %d seeds: each run against PyTorch's from the same seed."
           % len(rows), ""]
    for other in ("bn2d", "torch_perturbed"):
        g = [gaps(r, other) for r in rows]
        images = sorted(x[0] for x in g)
        counts = {k: images.count(k) for k in sorted(set(images))}
        epoch = sorted(x[1] for x in g)
        first = sorted(x[2] for x in g)

        def q(v, p):
            return v[min(len(v) - 1, int(p * len(v)))]
        out += ["### %s" % other, "",
                "- test accuracy gap, in images (of %d): %s" % (
                    rows[0]["images"], ", ".join("%d: %d seeds" % kv for kv in counts.items())),
                "- largest per-epoch loss gap / first epoch's loss: median %.2e, 99th percentile "
                "%.2e, max %.2e" % (q(epoch, 0.5), q(epoch, 0.99), epoch[-1]),
                "- first epoch's loss gap / its loss: median %.2e, 99th percentile %.2e, max %.2e"
                % (q(first, 0.5), q(first, 0.99), first[-1]), ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--jsonl", help="append each seed's runs here (and report them all)")
    ap.add_argument("--markdown-out")
    args = ap.parse_args()
    rng = random.SystemRandom()
    rows = []
    if args.jsonl and pathlib.Path(args.jsonl).exists():
        rows = [json.loads(line) for line in open(args.jsonl)]
    for _ in range(args.seeds):
        row = one_seed(rng.randrange(2**31))
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    text = report(rows)
    print(text)
    if args.markdown_out:
        pathlib.Path(args.markdown_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
