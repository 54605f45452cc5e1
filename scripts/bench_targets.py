#!/usr/bin/env python3
"""Issue 17's targets from one or more runs of bench/bn2d_bench (Google Benchmark JSON): per
suite shape and op, ours/floor (the lower of the streaming floor and the ordinary-store bound)
against the target (eval forward <= 1.10x, training forward
<= 1.30x, backward <= 1.45x) and the best peer's time / ours; then the geometric mean of
peer/ours per run and, with two runs or more, how much ours/floor moved between the first two
(the same binary run twice: the noise a ratio carries).

  scripts/bench_targets.py out/bench.json [out/bench_rerun.json] [--markdown-out FILE]
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_report  # noqa: E402

TARGETS = {"train_fwd": 1.30, "eval_fwd": 1.10, "bwd": 1.45}
PEERS = ["onednn_nchw", "onednn_nhwc", "torch", "torch_nhwc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--markdown-out", metavar="FILE")
    args = ap.parse_args()
    runs = [bench_report.load(p)[1] for p in args.json]
    head = ["shape", "op"] + ["ours/floor run %d" % (i + 1) for i in range(len(runs))]
    head += ["target", "met"] + ["best peer/ours run %d" % (i + 1) for i in range(len(runs))]
    rows = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(runs) + "---:|---|" +
            "---:|" * len(runs)]
    logs = [[] for _ in runs]
    moves = []
    for shape in bench_report.SUITE:
        for op in bench_report.OPS:
            if any((op, "ours", shape) not in t or (op, "floor_min", shape) not in t
                   for t in runs):
                continue
            ratios, peers = [], []
            for i, t in enumerate(runs):
                ours = t[(op, "ours", shape)][0]
                ratios.append(ours / t[(op, "floor_min", shape)][0])
                cands = [(t[(op, p, shape)][0], p) for p in PEERS if (op, p, shape) in t]
                best = min(cands)
                peers.append("%.2fx (%s)" % (best[0] / ours, best[1]))
                logs[i].append(math.log(best[0] / ours))
            if len(runs) > 1:
                moves.append(abs(ratios[1] / ratios[0] - 1))
            met = "yes" if max(ratios) <= TARGETS[op] else "no"
            rows.append("| " + " | ".join([shape, op] + ["%.2fx" % r for r in ratios] +
                                          ["%.2fx" % TARGETS[op], met] + peers) + " |")
    text = "\n".join(rows) + "\n\nGeometric mean of best peer / ours: " + ", ".join(
        "run %d %.2fx" % (i + 1, math.exp(sum(l) / len(l))) for i, l in enumerate(logs) if l)
    if moves:
        moves.sort()
        text += ("\n\nours/floor between run 1 and run 2: median change %.1f%%, largest %.1f%%"
                 % (100 * moves[len(moves) // 2], 100 * moves[-1]))
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
