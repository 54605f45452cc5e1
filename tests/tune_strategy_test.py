#!/usr/bin/env python3
"""scripts/tune_strategy.py picks the thresholds from measurements: synthetic benchmark JSON (two
ISAs) where split wins on short planes and loses on long ones, and one shape where it wins on one
ISA only; forward_add's threshold from the add + ReLU layers alone; the cache thresholds from the
calls the plane thresholds leave fused, in percent of the reported last-level cache (fewer than 16
channels never split: not counted); the machine file gets the largest value at or below which
split won everywhere, its other lines kept, and --dry-run leaves it alone."""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts",
                      "tune_strategy.py")


def bench_json(isa, split_over_fused, add_split_over_fused, relu_split_over_fused):
    """A run: for each (op, shape), fused 1 ms, split split_over_fused[(op, shape)] ms; the same
    for ResNet-50's add + ReLU layers of the training forward from add_split_over_fused and for
    its ReLU layers from relu_split_over_fused[(op, shape)]. A 32 MiB last-level cache."""
    runs = []

    def strategies(name, ratio):
        for impl, ms in (("ours_fused", 1.0), ("ours_split", ratio), ("floor", 0.5),
                         ("bound", 0.4)):
            runs.append({"run_name": name % impl, "aggregate_name": "median",
                         "real_time": ms * 1e6, "time_unit": "ns"})

    for (op, shape), ratio in split_over_fused.items():
        strategies("%s/%%s/%s/real_time" % (op, shape), ratio)
    for shape, ratio in add_split_over_fused.items():
        strategies("resnet50/train_fwd/%%s/%s/add_relu/real_time" % shape, ratio)
    for (op, shape), ratio in relu_split_over_fused.items():
        strategies("resnet50/%s/%%s/%s/relu/real_time" % (op, shape), ratio)
    caches = [{"type": "Unified", "level": 2, "size": 1 << 20},
              {"type": "Unified", "level": 3, "size": 32 << 20}]
    return {"context": {"bn2d_max_cpu_isa": isa, "caches": caches}, "benchmarks": runs}


def main():
    shapes = {49: "32x2048x7x7", 196: "32x1024x14x14", 784: "32x512x28x28",
              3136: "32x256x56x56"}
    fwd = {49: 0.5, 196: 0.7, 784: 0.9, 3136: 1.5}  # split wins up to 784
    bwd_avx512 = {49: 0.6, 196: 0.8, 784: 1.2, 3136: 2.0}  # up to 196
    bwd_avx2 = {49: 0.6, 196: 1.1, 784: 0.9, 3136: 2.0}  # loses at 196 on this ISA
    add_avx512 = {49: 0.3, 196: 0.5, 784: 0.8, 3136: 0.9}  # split wins everywhere here
    add_avx2 = {49: 0.3, 196: 0.5, 784: 0.8, 3136: 1.1}  # but at 3136 on this ISA
    # ReLU layers of 56x56 planes (above both plane thresholds): the bytes a float32 call moves,
    # in percent of 32 MiB: forward 2 tensors (38.3%, 76.6%, 153%), backward 4 (76.6%, 153%,
    # 306%); an image of 3 channels (37%) where split loses does not count.
    relu = {"avx512": {("train_fwd", "8x64x56x56"): 0.6, ("train_fwd", "16x64x56x56"): 0.9,
                       ("train_fwd", "32x64x56x56"): 1.2, ("train_fwd", "1x3x540x960"): 2.0,
                       ("bwd", "8x64x56x56"): 0.7, ("bwd", "16x64x56x56"): 1.1,
                       ("bwd", "32x64x56x56"): 0.9},
            "avx2": {("train_fwd", "8x64x56x56"): 0.7, ("train_fwd", "16x64x56x56"): 1.05,
                     ("train_fwd", "32x64x56x56"): 1.3, ("train_fwd", "1x3x540x960"): 2.0,
                     ("bwd", "8x64x56x56"): 0.8, ("bwd", "16x64x56x56"): 1.2,
                     ("bwd", "32x64x56x56"): 1.3}}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for isa, bwd, add in (("avx512", bwd_avx512, add_avx512), ("avx2", bwd_avx2, add_avx2)):
            ratios = {("train_fwd", shapes[p]): r for p, r in fwd.items()}
            ratios.update({("bwd", shapes[p]): r for p, r in bwd.items()})
            path = os.path.join(tmp, isa + ".json")
            with open(path, "w") as f:
                json.dump(bench_json(isa, ratios, {shapes[p]: r for p, r in add.items()},
                                     relu[isa]), f)
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
        assert "runtime.train_fwd.split_max_cache_percent = 39" in out.stdout, out.stdout
        assert "runtime.train_bwd.split_max_cache_percent = 77" in out.stdout, out.stdout
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        written = open(params).read()
        expected = ("# a machine file\ncpu.*.chunk = 16384\n"
                    "runtime.train_fwd.split_max_plane = 784\n"
                    "runtime.train_bwd.split_max_plane = 49\n"
                    "runtime.train_fwd.split_max_plane_add = 784\n"
                    "runtime.train_fwd.split_max_cache_percent = 39\n"
                    "runtime.train_bwd.split_max_cache_percent = 77\n")
        assert written == expected, written
    print("tune_strategy_test: ok")


if __name__ == "__main__":
    main()
