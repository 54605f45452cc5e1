// GPU schedules (CUDA, OpenCL) for the batchnorm2d pipelines.
//
// Structure:
//  * Per-channel sums: a tree of three kernels (schedule_channel_sums), so a small C or a
//    small N*H*W still launches enough blocks.
//  * Elementwise outputs (y, grad_input): 2-D tiles of a warp along W by `rows` rows of (h, c),
//    blocks over N too; a warp-wide tile keeps short rows (7x7 = 49) ~77% busy where a
//    128-wide one would be 38%.
//  * Per-channel outputs: one thread per channel.
// NHWC (channels_last): threads run along C, which is contiguous, so loads coalesce; the sums
// are blocks of rows with a thread per channel, then a thread per channel over the blocks.
// Every extent can be smaller than a tile, hence GuardWithIf throughout.
#pragma once

#include "Halide.h"
#include "bn2d_algorithm.h"
#include "schedule_params.h"

namespace bn2d::gpu {

using Halide::Func;
using Halide::RVar;
using Halide::TailStrategy;
using Halide::Var;

// The knobs a machine file may set for GPU kernels, as cuda.*, opencl.* or gpu.* (both).
inline const std::vector<std::string> kKnobs = {"threads", "tile_w", "rows", "channel_tile",
                                                "per_thread"};

struct Knobs {
    int threads;      // threads per block along W in reductions
    int tile_w;       // elementwise tile width along W (a warp: coalesced 128-byte rows)
    int rows;         // rows (h, c) per elementwise tile
    int channel_tile; // threads per block for per-channel outputs
    int per_thread;   // strided elements per thread in a reduction block
};

// `backend` is cuda or opencl (different hardware, tuned apart; gpu.* is their shared default).
inline Knobs knobs(const ScheduleParams &sp, const std::string &backend, const std::string &kernel) {
    Knobs k;
    k.threads = sp.get(backend, kernel, "threads", 128);
    k.tile_w = sp.get(backend, kernel, "tile_w", 32);
    k.rows = sp.get(backend, kernel, "rows", 8);
    k.channel_tile = sp.get(backend, kernel, "channel_tile", 64);
    k.per_thread = sp.get(backend, kernel, "per_thread", 16);
    if (k.threads < 1 || k.tile_w < 1 || k.rows < 1 || k.channel_tile < 1 || k.per_thread < 1)
        throw std::runtime_error(backend + "." + kernel + ": knobs must be >= 1");
    return k;
}

// Three kernels, so that every reduction level fills the GPU whatever C and N*H*W are:
//  1. partial(u, bw, n, c): block (bw, n, c) of `threads` threads; thread u sums elements
//     w = u + threads * j for `per_thread` consecutive j of its slice bw, over all rows h of
//     batch item n. Coalesced loads; C * N * ceil(W / (threads * per_thread)) blocks
//     (C = 3 on a 1080p image: ~3000 blocks; C = 2048 on 7x7: 65536 blocks).
//  2. lanes(u, c): block per channel, thread u sums partial(u, *, *, c).
//  3. sums(c): thread per channel sums its `threads` lanes.
inline void schedule_channel_sums(ChannelSums &s, const Vars &v, const Knobs &k) {
    Var u("u"), bw("bw"), nn("nn"), u2("u2");
    RVar rxo("rxo"), rxi("rxi"), rxoo("rxoo"), rxoi("rxoi");
    Func partial = s.sums.update()
                       .split(s.r.x, rxo, rxi, k.threads, TailStrategy::GuardWithIf)
                       .split(rxo, rxoo, rxoi, k.per_thread, TailStrategy::GuardWithIf)
                       .rfactor({{rxi, u}, {rxoo, bw}, {s.r.z, nn}});
    Func lanes = s.sums.update().rfactor({{rxi, u2}});

    partial.compute_root().reorder(u, bw, nn, v.c).gpu_blocks(bw, nn, v.c).gpu_threads(u);
    partial.update()
        .reorder(rxoi, s.r.y, u, bw, nn, v.c)
        .gpu_blocks(bw, nn, v.c)
        .gpu_threads(u);
    lanes.compute_root().reorder(u2, v.c).gpu_blocks(v.c).gpu_threads(u2);
    lanes.update().reorder(rxoo, s.r.z, u2, v.c).gpu_blocks(v.c).gpu_threads(u2);
    s.sums.compute_root().gpu_tile(v.c, Var("ci"), k.channel_tile, TailStrategy::GuardWithIf);
    s.sums.update().gpu_tile(v.c, Var("ci"), k.channel_tile, TailStrategy::GuardWithIf);
}

inline void schedule_elementwise(Func out, const Vars &v, const Knobs &k) {
    Var wo("wo"), wi("wi"), hc("hc"), hco("hco"), hci("hci");
    out.fuse(v.h, v.c, hc)
        .split(v.w, wo, wi, k.tile_w, TailStrategy::GuardWithIf)
        .split(hc, hco, hci, k.rows, TailStrategy::GuardWithIf)
        .reorder(wi, hci, wo, hco, v.n)
        .gpu_blocks(wo, hco, v.n)
        .gpu_threads(wi, hci);
}

inline void schedule_per_channel(const std::vector<Func> &outs, const Vars &v, const Knobs &k) {
    for (Func f : outs) {
        if (f.defined()) f.gpu_tile(v.c, Var("ci"), k.channel_tile, TailStrategy::GuardWithIf);
    }
}

// ---- NHWC ---------------------------------------------------------------------------------
inline void schedule_channel_sums_nhwc(ChannelSums &s, const Vars &v, const Knobs &k) {
    Var blk("blk"), nn("nn"), co("co"), ci("ci");
    RVar rxo("rxo"), rxi("rxi");
    Func partial = s.sums.update()
                       .split(s.r.x, rxo, rxi, k.per_thread * k.rows, TailStrategy::GuardWithIf)
                       .rfactor({{rxo, blk}, {s.r.z, nn}});
    partial.compute_root()
        .split(v.c, co, ci, k.tile_w, TailStrategy::GuardWithIf)
        .reorder(ci, co, blk, nn)
        .gpu_blocks(co, blk, nn)
        .gpu_threads(ci);
    partial.update()
        .split(v.c, co, ci, k.tile_w, TailStrategy::GuardWithIf)
        .reorder(rxi, s.r.y, ci, co, blk, nn)
        .gpu_blocks(co, blk, nn)
        .gpu_threads(ci);
    s.sums.compute_root().gpu_tile(v.c, ci, k.channel_tile, TailStrategy::GuardWithIf);
    s.sums.update().gpu_tile(v.c, ci, k.channel_tile, TailStrategy::GuardWithIf);
}

inline void schedule_elementwise_nhwc(Func out, const Vars &v, const Knobs &k) {
    Var wh("wh"), co("co"), ci("ci"), ro("ro"), ri("ri");
    out.fuse(v.w, v.h, wh)
        .split(v.c, co, ci, k.tile_w, TailStrategy::GuardWithIf)
        .split(wh, ro, ri, k.rows, TailStrategy::GuardWithIf)
        .reorder(ci, ri, co, ro, v.n)
        .gpu_blocks(co, ro, v.n)
        .gpu_threads(ci, ri);
}

inline void schedule_sums(ChannelSums &s, Layout layout, const Vars &v, const Knobs &k) {
    if (layout == Layout::nhwc) {
        schedule_channel_sums_nhwc(s, v, k);
    } else {
        schedule_channel_sums(s, v, k);
    }
}

inline void schedule_tensor(Func out, Layout layout, const Vars &v, const Knobs &k) {
    if (layout == Layout::nhwc) {
        schedule_elementwise_nhwc(out, v, k);
    } else {
        schedule_elementwise(out, v, k);
    }
}

inline void schedule_train_forward(TrainForward &p, const std::string &backend,
                                   const std::string &kernel, Layout layout, const Vars &v,
                                   const ScheduleParams &sp) {
    Knobs k = knobs(sp, backend, kernel);
    schedule_sums(p.stats.s, layout, v, k);
    p.scale.compute_root();
    schedule_per_channel({p.scale}, v, k);
    schedule_tensor(p.y, layout, v, k);
    schedule_per_channel({p.saved_mean, p.saved_invstd, p.running_mean_out, p.running_var_out}, v,
                         k);
}

inline void schedule_eval_forward(EvalForward &p, const std::string &backend,
                                  const std::string &kernel, Layout layout, const Vars &v,
                                  const ScheduleParams &sp) {
    Knobs k = knobs(sp, backend, kernel);
    p.scale.compute_root();
    schedule_per_channel({p.scale}, v, k);
    schedule_tensor(p.y, layout, v, k);
}

inline void schedule_backward(Backward &p, const std::string &backend, const std::string &kernel,
                              Layout layout, const Vars &v, const ScheduleParams &sp) {
    Knobs k = knobs(sp, backend, kernel);
    if (!p.training) {
        p.invstd.compute_root();
        schedule_per_channel({p.invstd}, v, k);
    }
    if (p.sums.sums.defined()) schedule_sums(p.sums, layout, v, k);
    if (p.coefficients.defined()) {
        p.coefficients.compute_root();
        schedule_per_channel({p.coefficients}, v, k);
    }
    if (p.grad_input.defined()) schedule_tensor(p.grad_input, layout, v, k);
    schedule_per_channel({p.grad_weight, p.grad_bias}, v, k);
}

}  // namespace bn2d::gpu
