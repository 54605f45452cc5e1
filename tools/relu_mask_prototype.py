"""The ReLU's mask as bits (issue 31, item 5): what packing and reading them cost, measured
on Halide JIT pipelines before any kernel is built that way.

Float32 NCHW tensors [N, C, P] (P = H*W, a dense plane as one row). Pointwise passes, each
vectorized along the plane (16 lanes) and parallel over the batch, timed alternately (medians):
  fwd        y = relu(x * a + b)                       (reads x, writes y)
  pack       the mask of that y, from x, as bits        (reads x, writes N*C*P/8 bytes)
  plain      dy * a + x * b                             (backward's pointwise shape, no mask)
  from_y     the same with dy masked by y > 0           (reads y as well)
  from_bits  the same with dy masked by the bits        (reads the bits instead of y)
Two bit layouts (--pack):
  row    bit w % 8 of byte w / 8 of the row: a byte gathers 8 neighbours, so a vector of bytes
         needs stride-8 values (shuffles), and a 16-lane read a byte-indexed load
  batch  bit n % 8 of byte n / 8 along the batch, at the same (c, w): each lane ORs its own 8
         bits from 8 batch items (no shuffles), and a read is one byte per lane, shifted by a
         scalar
Checks that from_bits equals from_y exactly (the mask is the same).
Usage: .venv/bin/python tools/relu_mask_prototype.py N C P [--pack row|batch] [--reps 15]
"""
import argparse
import time

import halide as hl
import numpy as np

U32 = hl.UInt(32)


def not_positive(f):
    """f <= 0 on the bits (NaN is positive), as generators/bn2d_algorithm.h tests it."""
    bits = hl.reinterpret(U32, f)
    magnitude = (bits << 1) >> 1
    return (magnitude == 0) | (((bits >> 31) == 1) & (magnitude <= 0x7F800000))


def select_float(cond, a, b):
    return hl.reinterpret(hl.Float(32), hl.select(cond, hl.reinterpret(U32, a), hl.reinterpret(U32, b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("N", type=int)
    ap.add_argument("C", type=int)
    ap.add_argument("P", type=int)
    ap.add_argument("--pack", choices=["row", "batch"], default="batch")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    N, C, P = args.N, args.C, args.P
    rng = np.random.default_rng()
    X = hl.Buffer(rng.uniform(-2, 3, (N, C, P)).astype(np.float32))
    DY = hl.Buffer(rng.uniform(-2, 3, (N, C, P)).astype(np.float32))
    p, c, n, k = hl.Var("p"), hl.Var("c"), hl.Var("n"), hl.Var("k")
    a, b = hl.f32(0.7), hl.f32(0.2)

    def relu_at(pp, nn):
        t = X[pp, c, nn] * a + b
        return select_float(not_positive(t), hl.f32(0), t)

    fwd = hl.Func("fwd")
    fwd[p, c, n] = relu_at(p, n)
    pack = hl.Func("pack")
    byte = hl.u8(0)
    for i in range(8):
        if args.pack == "row":  # k: the byte along the row
            inside, value = k * 8 + i < P, relu_at(hl.min(k * 8 + i, P - 1), n)
        else:  # k: the byte along the batch
            inside, value = k * 8 + i < N, relu_at(p, hl.min(k * 8 + i, N - 1))
        byte = byte | hl.select(inside & ~not_positive(value), hl.u8(1 << i), hl.u8(0))
    y = hl.Buffer(hl.Float(32), [P, C, N])
    if args.pack == "row":
        pack[k, c, n] = byte
        mask = hl.Buffer(hl.UInt(8), [(P + 7) // 8, C, N])
        bit = (hl.cast(U32, mask[p // 8, c, n]) >> hl.cast(U32, p % 8)) & 1
    else:
        pack[p, c, k] = byte
        mask = hl.Buffer(hl.UInt(8), [P, C, (N + 7) // 8])
        bit = (hl.cast(U32, mask[p, c, n // 8]) >> hl.cast(U32, n % 8)) & 1
    plain, from_y, from_bits = hl.Func("plain"), hl.Func("from_y"), hl.Func("from_bits")
    plain[p, c, n] = DY[p, c, n] * a + X[p, c, n] * b
    from_y[p, c, n] = select_float(not_positive(y[p, c, n]), hl.f32(0), DY[p, c, n]) * a + X[p, c, n] * b
    from_bits[p, c, n] = select_float(bit == 0, hl.f32(0), DY[p, c, n]) * a + X[p, c, n] * b

    for f in (fwd, plain, from_y, from_bits):
        f.vectorize(p, 16, hl.TailStrategy.GuardWithIf).parallel(n)
    if args.pack == "row":
        pack.vectorize(k, 16, hl.TailStrategy.GuardWithIf).parallel(n)
    else:
        pack.vectorize(p, 16, hl.TailStrategy.GuardWithIf).parallel(k)
    target = hl.get_jit_target_from_environment()
    runs = {
        "fwd": (fwd, y),
        "pack": (pack, mask),
        "plain": (plain, hl.Buffer(hl.Float(32), [P, C, N])),
        "from_y": (from_y, hl.Buffer(hl.Float(32), [P, C, N])),
        "from_bits": (from_bits, hl.Buffer(hl.Float(32), [P, C, N])),
    }
    for f, out in runs.values():
        f.compile_jit(target)
    fwd.realize(y)  # y and the mask first: the backward passes read them
    pack.realize(mask)
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, (f, out) in runs.items():
            start = time.perf_counter()
            f.realize(out)
            times[name].append((time.perf_counter() - start) * 1e3)
    if not np.array_equal(np.asarray(runs["from_y"][1]), np.asarray(runs["from_bits"][1])):
        raise SystemExit("the bits' mask differs from y's")
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"{N}x{C}x{P} ({args.pack}) ms: " + " ".join(f"{k} {v:.3f}" for k, v in med.items()) +
          f" | pack/fwd {med['pack'] / med['fwd']:.2f}, from_bits/from_y"
          f" {med['from_bits'] / med['from_y']:.2f}, from_bits/plain {med['from_bits'] / med['plain']:.2f}")


if __name__ == "__main__":
    main()
