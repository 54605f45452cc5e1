#!/usr/bin/env python3
"""Turns the tuner's results (<report>.json from tools/tune/report.cpp, via scripts/tune.sh) into
a markdown table and a PNG plot: per kernel and problem, time / floor of the default schedule,
the tuned one and Halide's autoschedulers, all measured in one run, interleaved.

The plot (when matplotlib can be imported; the table needs only the standard library) has two
panels: the geometric mean over problems of time / floor per kernel and implementation, and the
search's best score against elapsed time per kernel. Several JSON files (e.g. the same budget
with --search descent and --search random) are compared on the second panel and summarized in
a table of best scores at equal budget.

  scripts/tune_report.py run.json [more.json ...] [--markdown-out FILE] [--png FILE]
"""
import argparse
import json
import math
import sys


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def implementations(run):
    names = ["default", "tuned"]
    for k in run["kernels"]:
        for name in list(k["ratios"]) + list(k.get("autoscheduler_errors", {})):
            if name not in names:
                names.append(name)
    return names


def fmt(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else "{:.2f}x".format(v)


def table(run):
    names = implementations(run)
    out = ["## Tuned vs default vs Halide's autoschedulers: time / floor",
           "",
           "{} ({}), {}, Halide {}; backend {}, search {}, budget {:.0f} s (used {:.0f} s). "
           "Medians of interleaved repetitions, each paired with the floor (the op's bytes with "
           "streaming stores); lower is better, 1.00x is the floor. File: `{}`.".format(
               run["machine"], run["target"], run["date"], run["halide"], run["backend"],
               run["search"], run["budget_seconds"], run["used_seconds"], run["params_file"]),
           "",
           "| kernel | problem | " + " | ".join(names) + " | default/tuned |",
           "|---|---|" + "---:|" * (len(names) + 1)]
    failures = {}
    for k in run["kernels"]:
        for i, problem in enumerate(k.get("problems", run["problems"])):
            cells = []
            for n in names:
                r = k["ratios"].get(n)
                if n in k.get("autoscheduler_errors", {}):
                    failures.setdefault(n, {})[k["kernel"]] = k["autoscheduler_errors"][n]
                if r is None or r[i] is None:
                    cells.append("failed" if n in k.get("autoscheduler_errors", {}) else "-")
                else:
                    cells.append(fmt(r[i]))
            gain = k["ratios"]["default"][i] / k["ratios"]["tuned"][i]
            out.append("| {} | {} | {} | {:.2f}x |".format(k["kernel"], problem, " | ".join(cells), gain))
    out += ["", "Geometric mean over problems, and the knobs:", "",
            "| kernel | " + " | ".join(names) + " | candidates | tuned knobs (default) |",
            "|---|" + "---:|" * len(names) + "---:|---|"]
    for k in run["kernels"]:
        cells = []
        for n in names:
            r = k["ratios"].get(n)
            if r is None or None in r:  # a geomean over fewer problems would not compare
                ok = [v for v in (r or []) if v is not None]
                cells.append("failed" if not ok else "{} ({}/{})".format(fmt(geomean(ok)), len(ok), len(r)))
            else:
                cells.append(fmt(geomean(r)))
        knobs = k["tuned"] if k["tuned"] != k["default"] else "default"
        note = " (search's best lost to the default in the final run)" if k.get("kept_default") else ""
        out.append("| {} | {} | {} | {} ({}){} |".format(
            k["kernel"], " | ".join(cells), k["measured"] + k["replayed"], knobs, k["default"], note))
    if failures:
        out += ["", "Autoscheduler failures:"]
        for n, per_kernel in failures.items():
            reasons = sorted(set(per_kernel.values()))
            out.append("- {} ({}): {}".format(n, ", ".join(sorted(per_kernel)), "; ".join(
                r.strip().replace("\n", " ")[:200] for r in reasons)))
    return "\n".join(out) + "\n"


def comparison(runs):
    """Best search score per kernel at equal budget, one column per run (e.g. descent, random)."""
    kernels = [k["kernel"] for k in runs[0]["kernels"]]
    out = ["## Search strategies at equal budget: best score found (geomean time / floor)", "",
           "Each cell: the best candidate's score during the search / the default's score in the "
           "same run, then the final run's tuned and default (interleaved), and the candidates "
           "measured.", "",
           "| kernel | " + " | ".join("{} ({:.0f} s)".format(r["search"], r["budget_seconds"])
                                   for r in runs) + " |",
           "|---|" + "---:|" * len(runs)]
    for name in kernels:
        cells = []
        for r in runs:
            k = next((k for k in r["kernels"] if k["kernel"] == name), None)
            if k is None:
                cells.append("-")
                continue
            cells.append("{:.3f}x / {:.3f}x; final {} / {} ({} cand.)".format(
                k["search_best_score"], k["search_default_score"], fmt(geomean(k["ratios"]["tuned"])),
                fmt(geomean(k["ratios"]["default"])), k["measured"] + k["replayed"]))
        out.append("| {} | {} |".format(name, " | ".join(cells)))
    return "\n".join(out) + "\n"


def plot(path, runs):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot written", file=sys.stderr)
        return
    run = runs[0]
    names = implementations(run)
    kernels = [k["kernel"] for k in run["kernels"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5))
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        ys = [geomean([v for v in k["ratios"][n] if v is not None]) if n in k["ratios"] else 0
              for k in run["kernels"]]
        ys = [0 if math.isnan(y) else y for y in ys]
        ax1.bar([i + j * width for i in range(len(kernels))], ys, width, label=n)
    ax1.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="floor")
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(kernels))])
    ax1.set_xticklabels(kernels, rotation=30, ha="right")
    ax1.set_ylabel("time / floor (geomean over problems; lower is better)")
    ax1.set_yscale("log")
    ax1.set_title("{}: tuned vs default vs autoschedulers".format(run["machine"]))
    ax1.legend(fontsize=8)
    styles = ["-", "--", ":", "-."]
    for ri, r in enumerate(runs):
        for k in r["kernels"]:
            trace = [(t, s) for t, s in k["trace"] if s > 0]
            if trace:
                ax2.step([t for t, _ in trace], [s / k["search_default_score"] for _, s in trace],
                         where="post", linestyle=styles[ri % len(styles)],
                         label="{} ({})".format(k["kernel"], r["search"]) if len(runs) > 1 or ri == 0 else None)
    ax2.set_xlabel("elapsed (s)")
    ax2.set_ylabel("best score / default score")
    ax2.set_title("search progress" + (" (" + " vs ".join(r["search"] for r in runs) + ")" if len(runs) > 1 else ""))
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote " + path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--markdown-out")
    ap.add_argument("--png")
    args = ap.parse_args()
    runs = []
    for path in args.json:
        with open(path) as f:
            runs.append(json.load(f))
    text = table(runs[0])
    if len(runs) > 1:
        text += "\n" + comparison(runs)
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)
    if args.png:
        plot(args.png, runs)


if __name__ == "__main__":
    main()
