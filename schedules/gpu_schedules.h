// GPU schedules (CUDA, OpenCL) for the batchnorm2d pipelines.
//
// What the kernels see: the runtime presents a dense NCHW plane as one row of H*W elements
// (h extent 1) and dense NHWC as N*H*W rows of C values, so a "row" below is W as presented:
// 49 elements for a 7x7 plane, 12544 for 112x112, 2 million for a 1080p image.
//
// Structure (measured on an H100 first with one thread per element and a serial per-channel
// tail: training forward 8.2x a device copy; see bench/results/gpu_h100_2026-11-26.md):
//  * Per-channel sums: a tree of three kernels, deterministic (no atomics), each level's
//    accumulators in registers (in_registers) and enough independent loads in flight:
//      1. partial(t, kb, hb, rb, c): block (kb, hb, rb, c) of T threads along W; thread t sums
//         elements at stride T (coalesced) over its rows: 8 batch rows unrolled (long and
//         short rows), or U unrolled elements for each of S spans (huge rows).
//      2. lanes(t, c): a block per channel, thread t sums partial(t, *, *, *, c), unrolled by 4.
//      3. sums(c): a thread per channel sums its T lanes, unrolled.
//    The row length picks one of three specializations at run time: huge rows (one image per
//    channel: S = 32 spans, so the tree stays small), long rows (128 threads along W) and short
//    rows (a warp wide: a 7x7 plane keeps 49 of 64 lanes busy).
//  * Elementwise outputs (y, grad_input): long rows are cut into blocks of T threads with U
//    unrolled elements each; short rows use 2-D tiles of a warp along W by `rows` rows.
//  * Per-channel Funcs: a thread per channel, those computed together fused into one kernel.
// NHWC (channels_last): threads run along C, which is contiguous, so loads coalesce; the sums
// are blocks of rows (unrolled by 8 for loads in flight) with a thread per channel, then two
// levels over the blocks. Every extent can be smaller than a tile, hence GuardWithIf.
#pragma once

#include <functional>

#include "Halide.h"
#include "bn2d_algorithm.h"
#include "schedule_params.h"

namespace bn2d::gpu {

using Halide::Expr;
using Halide::Func;
using Halide::RVar;
using Halide::Stage;
using Halide::TailStrategy;
using Halide::Var;

// The knobs a machine file may set for GPU kernels, as cuda.*, opencl.* or gpu.* (both), their
// defaults and the values the tuner tries (every kernel reads all five). Blocks are at most
// threads, tile_w x rows or channel_tile threads: 1024 at most with these values, the limit
// of CUDA and of the OpenCL devices we target.
inline const std::vector<KnobRange> kKnobRanges = {
    {"threads", 128, {32, 64, 128, 256, 512}},
    {"tile_w", 32, {8, 16, 32, 64}},
    {"rows", 8, {1, 2, 4, 8, 16}},
    {"channel_tile", 64, {32, 64, 128, 256}},
    {"per_thread", 8, {1, 2, 4, 8, 16}},
};
inline const std::vector<std::string> kKnobs = knob_names(kKnobRanges);

inline std::vector<std::string> searched_knobs(const std::string &) { return kKnobs; }

struct Knobs {
    int threads;       // threads per block along long rows (reductions and elementwise)
    int tile_w;        // tile width along short rows, and channels per block in NHWC
    int rows;          // rows per block: reductions (R), short-row elementwise tiles
    int channel_tile;  // threads per block for per-channel outputs
    int per_thread;    // unrolled elements per thread along a row (U), at stride `threads`
};

// `backend` is cuda or opencl (different hardware, tuned apart; gpu.* is their shared default).
inline Knobs knobs(const ScheduleParams &sp, const std::string &backend,
                   const std::string &kernel) {
    auto get = [&](const char *knob) {
        return sp.get(backend, kernel, knob, knob_range(kKnobRanges, knob).fallback);
    };
    Knobs k;
    k.threads = get("threads");
    k.tile_w = get("tile_w");
    k.rows = get("rows");
    k.channel_tile = get("channel_tile");
    k.per_thread = get("per_thread");
    if (k.threads < 1 || k.tile_w < 1 || k.rows < 1 || k.channel_tile < 1 || k.per_thread < 1)
        throw std::runtime_error(backend + "." + kernel + ": knobs must be >= 1");
    return k;
}

// Rows at least this long use the long-row schedules (sums and elementwise); a row of a whole
// image uses spans.
inline int long_row_length(const Knobs &k) { return k.threads * k.per_thread; }
constexpr int kHugeRow = 1 << 15;
constexpr int kSpansPerHugeRow = 32;

// A reduction level computed in registers: `f` (its zero and its sums) per thread of a global
// wrapper, which the caller tiles; one kernel per level and no read-modify-write of global
// memory per element (measured on an H100: the partial sums of 32x64x112x112 took 105 us as
// global updates plus 36 us to zero them first).
inline Func in_registers(Func f, const Var &thread) {
    Func out = f.in();
    f.compute_at(out, thread);
    return out;
}

// One specialization of the NCHW sums tree (see the header comment).
// `stage` returns the specialization being scheduled (rfactor rewrites it, so it is fetched
// again for each level).
inline void schedule_sums_tree(const std::function<Stage()> &stage, ChannelSums &s, const Vars &v,
                               const Knobs &k, const std::string &tag, int threads, int unroll,
                               int spans, int rows, bool rows_in_flight) {
    // Names are unique per specialization: bounds inference matches loop variables by name,
    // and two specializations with a `t` of different extents would share one bound.
    auto name = [&](const char *n) { return tag + "_" + n; };
    RVar rb(name("rb")), ri(name("ri")), wo(name("wo")), t(name("t")), u(name("u")), wb(name("wb")),
        sp(name("sp")), kb(name("kb")), hb(name("hb")), hi(name("hi"));
    Var vt(name("vt")), vkb(name("vkb")), vhb(name("vhb")), vrb(name("vrb"));
    // Rows are batch items n, in blocks of `rows`; a dense plane has h extent 1, a strided
    // tensor's h is cut into blocks of 8 as well (one thread over all 1080 rows of a
    // channels_last image took 3.6 ms on an H100). h and n stay separate RVars: fused into one
    // row index they cost an integer division per element.
    stage()
        .split(s.r.z, rb, ri, rows, TailStrategy::GuardWithIf)
        .split(s.r.y, hb, hi, 8, TailStrategy::GuardWithIf)
        .split(s.r.x, wo, t, threads, TailStrategy::GuardWithIf)
        .split(wo, wb, u, unroll, TailStrategy::GuardWithIf)
        .split(wb, kb, sp, spans, TailStrategy::GuardWithIf);
    RVar rio(name("rio")), rii(name("rii"));
    if (rows_in_flight) stage().split(ri, rio, rii, 8, TailStrategy::GuardWithIf);
    Func partial = stage().rfactor({{t, vt}, {kb, vkb}, {hb, vhb}, {rb, vrb}});
    // (kb, rb) share the grid's x dimension: y and z are limited to 65535 and N / rows can
    // exceed it; H / 8 and C cannot. (Fusing hb in as well lost the per-thread bounds: the
    // accumulator went to memory.)
    Var kr(name("kr"));
    in_registers(partial, vt)
        .compute_root()
        .reorder(vt, vkb, vrb, vhb, v.c)
        .fuse(vkb, vrb, kr)
        .gpu_blocks(kr, vhb, v.c)
        .gpu_threads(vt);
    if (rows_in_flight) {
        // 8 rows unrolled innermost: their guard is on the serial rio loop, which Halide splits
        // into a guard-free steady state, so the 8 loads issue back to back. (Unrolling along
        // W instead put a per-block guard on every load and ran at ~1 TB/s on an H100.)
        partial.update().reorder(rii, rio, hi, u, sp).unroll(rii);
    } else {
        partial.update().reorder(u, sp, ri, hi).unroll(u);
    }

    // (kb, hb) fused: one unrolled loop whatever mix of W blocks and h blocks a shape has.
    RVar khb(name("khb")), kbo(name("kbo")), kbi(name("kbi"));
    Var vt2(name("vt2"));
    Func lanes = stage().rfactor({{t, vt2}});
    in_registers(lanes, vt2).compute_root().reorder(vt2, v.c).gpu_blocks(v.c).gpu_threads(vt2);
    lanes.update()
        .fuse(kb, hb, khb)
        .split(khb, kbo, kbi, 4, TailStrategy::GuardWithIf)
        .reorder(kbi, kbo, rb)
        .unroll(kbi);

    RVar to(name("to")), ti(name("ti"));
    stage().split(t, to, ti, 8, TailStrategy::GuardWithIf).unroll(ti);
}

inline void schedule_channel_sums(ChannelSums &s, const Vars &v, const Knobs &k) {
    s.require_one_level("gpu sums");
    const Expr row = s.r.x.extent();
    const Expr huge = row >= kHugeRow, long_row = row >= long_row_length(k);
    schedule_sums_tree([&] { return s.sums.update().specialize(huge); }, s, v, k, "huge", k.threads,
                       k.per_thread, kSpansPerHugeRow, 1, false);
    schedule_sums_tree([&] { return s.sums.update().specialize(long_row); }, s, v, k, "long",
                       k.threads, k.per_thread, 1, 4 * k.rows, true);
    schedule_sums_tree([&] { return s.sums.update(); }, s, v, k, "short", k.tile_w, 2, 1,
                       4 * k.rows, true);
    Var ci("ci");
    in_registers(s.sums, ci)
        .compute_root()
        .gpu_tile(v.c, ci, k.channel_tile, TailStrategy::GuardWithIf);
}

inline void schedule_elementwise(Func out, const Vars &v, const Knobs &k, Expr row) {
    Var wo("wo"), wi("wi"), u("u"), t("t"), hc("hc"), hco("hco"), hci("hci"), blk("blk");
    // Long rows: a block is T threads x U unrolled elements of one row; (row block, h, c) are
    // fused into the grid's x dimension, which has no 65535 limit.
    out.specialize(row >= long_row_length(k))
        .split(v.w, wo, wi, long_row_length(k), TailStrategy::GuardWithIf)
        .split(wi, u, t, k.threads)
        .fuse(v.h, v.c, hc)
        .reorder(u, t, wo, hc, v.n)  // u inside the thread: no barrier between its steps
        .fuse(wo, hc, blk)
        .unroll(u)
        .gpu_blocks(blk, v.n)
        .gpu_threads(t);
    out.fuse(v.h, v.c, hc)
        .split(v.w, wo, wi, k.tile_w, TailStrategy::GuardWithIf)
        .split(hc, hco, hci, k.rows, TailStrategy::GuardWithIf)
        .reorder(wi, hci, wo, hco, v.n)
        .gpu_blocks(wo, hco, v.n)
        .gpu_threads(wi, hci);
}

// Per-channel Funcs, computed at root: a thread per channel, all of them in one kernel
// (compute_with at the thread level): on an H100 each launch of a C-element kernel cost ~3 us,
// six of them 20 us.
inline void schedule_per_channel(const std::vector<Func> &outs, const Vars &v, const Knobs &k) {
    Var ci("ci");
    Func first;
    for (Func f : outs) {
        if (!f.defined()) continue;
        f.compute_root().gpu_tile(v.c, ci, k.channel_tile, TailStrategy::GuardWithIf);
        if (first.defined()) f.compute_with(first, ci);
        first = f;
    }
}

// ---- NHWC ---------------------------------------------------------------------------------
inline void schedule_channel_sums_nhwc(ChannelSums &s, const Vars &v, const Knobs &k) {
    s.require_one_level("gpu NHWC sums");
    Var blk("blk"), nn("nn"), co("co"), ci("ci"), vbo("vbo");
    RVar rxo("rxo"), rxi("rxi"), rxio("rxio"), rxii("rxii"), bo("bo"), bi("bi");
    // 1. Blocks of per_thread * rows * 8 rows x tile_w channels; each thread sums its channel
    //    over the block's rows, 8 loads in flight.
    Func partial = s.sums.update()
                       .split(s.r.x, rxo, rxi, k.per_thread * k.rows * 8, TailStrategy::GuardWithIf)
                       .rfactor({{rxo, blk}, {s.r.z, nn}});
    Var cb("cb");  // (channel tile, block) in the grid's x dimension, which has no 65535 limit
    in_registers(partial, ci)
        .compute_root()
        .split(v.c, co, ci, k.tile_w, TailStrategy::GuardWithIf)
        .reorder(ci, co, blk, nn)
        .fuse(co, blk, cb)
        .gpu_blocks(cb, nn)
        .gpu_threads(ci);
    partial.update()
        .split(rxi, rxio, rxii, 8, TailStrategy::GuardWithIf)
        .reorder(rxii, rxio, s.r.y)
        .unroll(rxii);
    // 2. Groups of 32 blocks, a thread per channel; 3. a thread per channel over the groups.
    Func groups =
        s.sums.update().split(rxo, bo, bi, 32, TailStrategy::GuardWithIf).rfactor({{bo, vbo}});
    in_registers(groups, ci)
        .compute_root()
        .split(v.c, co, ci, k.tile_w, TailStrategy::GuardWithIf)
        .reorder(ci, co, vbo)
        .gpu_blocks(co, vbo)
        .gpu_threads(ci);
    groups.update().reorder(bi, s.r.z).unroll(bi, 4, TailStrategy::GuardWithIf);
    in_registers(s.sums, ci)
        .compute_root()
        .gpu_tile(v.c, ci, k.channel_tile, TailStrategy::GuardWithIf);
}

inline void schedule_elementwise_nhwc(Func out, const Vars &v, const Knobs &k) {
    Var wh("wh"), co("co"), ci("ci"), ro("ro"), ri("ri"), ru("ru"), rr("rr"), cb("cb");
    // A block is tile_w channels (coalesced) x `rows` rows of threads, each thread per_thread
    // rows apart, unrolled; (channel tile, row block) share the grid's x dimension.
    out.fuse(v.w, v.h, wh)
        .split(v.c, co, ci, k.tile_w, TailStrategy::GuardWithIf)
        .split(wh, ro, rr, k.rows * k.per_thread, TailStrategy::GuardWithIf)
        .split(rr, ru, ri, k.rows)
        .reorder(ru, ci, ri, co, ro, v.n)
        .fuse(co, ro, cb)
        .unroll(ru)
        .gpu_blocks(cb, v.n)
        .gpu_threads(ci, ri);
}

inline void schedule_sums(ChannelSums &s, Layout layout, const Vars &v, const Knobs &k) {
    if (layout == Layout::nhwc) {
        schedule_channel_sums_nhwc(s, v, k);
    } else {
        schedule_channel_sums(s, v, k);
    }
}

// `row`: the row length as presented (the input's dim 0 extent).
inline void schedule_tensor(Func out, Layout layout, const Vars &v, const Knobs &k, Expr row) {
    if (layout == Layout::nhwc) {
        schedule_elementwise_nhwc(out, v, k);
    } else {
        schedule_elementwise(out, v, k, row);
    }
}

inline void schedule_train_forward(TrainForward &p, const std::string &backend,
                                   const std::string &kernel, Layout layout, const Vars &v,
                                   const ScheduleParams &sp, Expr row) {
    Knobs k = knobs(sp, backend, kernel);
    schedule_sums(p.stats.s, layout, v, k);
    // The mean and scale once per channel, not per element (the mean is K + S1/M in float64).
    schedule_per_channel({p.mean, p.scale}, v, k);
    schedule_tensor(p.y, layout, v, k, row);
    schedule_per_channel({p.saved_mean, p.saved_invstd, p.running_mean_out, p.running_var_out}, v,
                         k);
}

inline void schedule_eval_forward(EvalForward &p, const std::string &backend,
                                  const std::string &kernel, Layout layout, const Vars &v,
                                  const ScheduleParams &sp, Expr row) {
    Knobs k = knobs(sp, backend, kernel);
    schedule_per_channel({p.scale}, v, k);
    schedule_tensor(p.y, layout, v, k, row);
}

inline void schedule_backward(Backward &p, const std::string &backend, const std::string &kernel,
                              Layout layout, const Vars &v, const ScheduleParams &sp, Expr row) {
    Knobs k = knobs(sp, backend, kernel);
    if (!p.training) schedule_per_channel({p.invstd}, v, k);
    if (p.sums.sums.defined() && !p.synchronized) schedule_sums(p.sums, layout, v, k);
    schedule_per_channel({p.coefficients}, v, k);  // skipped when undefined
    if (p.grad_input.defined()) schedule_tensor(p.grad_input, layout, v, k, row);
    if (p.local_sums.defined())
        p.local_sums.bound(p.field, 0, 2).reorder(p.field, v.c).unroll(p.field);
    schedule_per_channel({p.grad_weight, p.grad_bias, p.local_sums}, v, k);
}

// SyncBatchNorm2d: a process's partial statistics (training forward's sums tree), and the
// merge over processes (a thread per channel, the processes in order in registers).
inline void schedule_partial_stats(PartialStats &p, const std::string &backend,
                                   const std::string &kernel, Layout layout, const Vars &v,
                                   const ScheduleParams &sp) {
    Knobs k = knobs(sp, backend, kernel);
    schedule_sums(p.stats.s, layout, v, k);
    p.partial.bound(p.field, 0, 3).reorder(p.field, v.c).unroll(p.field);
    schedule_per_channel({p.partial}, v, k);
}

inline void schedule_sync_statistics(SyncStatistics &p, const std::string &backend,
                                     const std::string &kernel, const Vars &v,
                                     const ScheduleParams &sp) {
    Knobs k = knobs(sp, backend, kernel);
    Var ci("ci");
    in_registers(p.merged.merged, ci)
        .compute_root()
        .gpu_tile(v.c, ci, k.channel_tile, TailStrategy::GuardWithIf);
    schedule_per_channel(
        {p.o.mean, p.var, p.o.saved_invstd, p.o.running_mean_out, p.o.running_var_out}, v, k);
}

}  // namespace bn2d::gpu
