#!/usr/bin/env python3
"""scripts/tune_strategy.py picks the thresholds from measurements: synthetic benchmark JSON (two
ISAs) where split wins on short planes and loses on long ones, and one shape where it wins on one
ISA only; forward_add's threshold from the add + ReLU layers alone; the machine file gets the
largest plane at or below which split won everywhere, its other lines kept, and --dry-run leaves
it alone."""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts",
                      "tune_strategy.py")


def bench_json(isa, split_over_fused, add_split_over_fused):
    """A run: for each (op, shape), fused 1 ms, split split_over_fused[(op, shape)] ms; the same
    for ResNet-50's add + ReLU layers of the training forward from add_split_over_fused."""
    runs = []

    def strategies(name, ratio):
        for impl, ms in (("ours_fused", 1.0), ("ours_split", ratio), ("floor", 0.5),
                         ("bound", 0.4)):
            runs.append({"run_name": name % impl, "aggregate_name": "median",
                         "real_time": ms * 1e6, "time_unit": "ns"})

    for (op, shape), ratio in split_over_fused.items():
        strategies("%s/%%s/%s/real_time" % (op, shape), ratio)
        # ResNet-50's names, with a tail; a ReLU alone counts for no threshold.
        runs.append({"run_name": "resnet50/%s/ours_split/%s/relu/real_time" % (op, shape),
                     "aggregate_name": "median", "real_time": 99e6, "time_unit": "ns"})
    for shape, ratio in add_split_over_fused.items():
        strategies("resnet50/train_fwd/%%s/%s/add_relu/real_time" % shape, ratio)
    return {"context": {"bn2d_max_cpu_isa": isa}, "benchmarks": runs}


def main():
    shapes = {49: "32x2048x7x7", 196: "32x1024x14x14", 784: "32x512x28x28",
              3136: "32x256x56x56"}
    fwd = {49: 0.5, 196: 0.7, 784: 0.9, 3136: 1.5}  # split wins up to 784
    bwd_avx512 = {49: 0.6, 196: 0.8, 784: 1.2, 3136: 2.0}  # up to 196
    bwd_avx2 = {49: 0.6, 196: 1.1, 784: 0.9, 3136: 2.0}  # loses at 196 on this ISA
    add_avx512 = {49: 0.3, 196: 0.5, 784: 0.8, 3136: 0.9}  # split wins everywhere here
    add_avx2 = {49: 0.3, 196: 0.5, 784: 0.8, 3136: 1.1}  # but at 3136 on this ISA
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for isa, bwd, add in (("avx512", bwd_avx512, add_avx512), ("avx2", bwd_avx2, add_avx2)):
            ratios = {("train_fwd", shapes[p]): r for p, r in fwd.items()}
            ratios.update({("bwd", shapes[p]): r for p, r in bwd.items()})
            path = os.path.join(tmp, isa + ".json")
            with open(path, "w") as f:
                json.dump(bench_json(isa, ratios, {shapes[p]: r for p, r in add.items()}), f)
            files.append(path)
        params = os.path.join(tmp, "m.params")
        original = "# a machine file\ncpu.*.chunk = 16384\nruntime.train_fwd.split_max_plane = 7\n"
        with open(params, "w") as f:
            f.write(original)
        cmd = [sys.executable, SCRIPT, "--from-json", ",".join(files), "--params", params]
        out = subprocess.run(cmd + ["--dry-run"], check=True, capture_output=True, text=True)
        assert open(params).read() == original, "--dry-run wrote the file"
        assert "runtime.train_fwd.split_max_plane = 784" in out.stdout, out.stdout
        assert "runtime.train_bwd.split_max_plane = 49" in out.stdout, out.stdout
        assert "runtime.train_fwd.split_max_plane_add = 784" in out.stdout, out.stdout
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        written = open(params).read()
        expected = ("# a machine file\ncpu.*.chunk = 16384\n"
                    "runtime.train_fwd.split_max_plane = 784\n"
                    "runtime.train_bwd.split_max_plane = 49\n"
                    "runtime.train_fwd.split_max_plane_add = 784\n")
        assert written == expected, written
    print("tune_strategy_test: ok")


if __name__ == "__main__":
    main()
