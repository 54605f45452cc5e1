// CPU schedules for the batchnorm2d pipelines (x86-64 SIMD, any ISA Halide targets).
//
// Memory-bound op, so the schedule is about DRAM passes:
//  * Per-channel fusion. A channel's statistics (or gradient sums) are computed right before
//    that channel is normalized, inside the same parallel-over-channels loop, so the second
//    read of the channel hits L2 instead of DRAM when the channel fits (N*H*W*4 bytes: 126 KB
//    for the seed's 20x35x45, 1.6 MB for 32x112x112). Training forward then moves ~1 read +
//    1 write of the tensor, the streaming bound.
//  * Reductions vectorized along W by rfactor into `lanes * accumulators` partial sums: several
//    independent accumulator vectors hide the add latency, and the partials are a two-level
//    (pairwise-like) summation that keeps float32 rounding error small.
//  * Pointwise kernels (eval forward, eval grad_input) split W into chunks and parallelize over
//    (chunk, h, c, n), so even C = 3, N = 1 keeps every core busy.
// Tunables come from ScheduleParams (schedules/machines/*.params); defaults below.
#pragma once

#include "Halide.h"
#include "bn2d_algorithm.h"
#include "schedule_params.h"

namespace bn2d::cpu {

using Halide::Func;
using Halide::LoopLevel;
using Halide::RVar;
using Halide::TailStrategy;
using Halide::Target;
using Halide::Var;

struct Knobs {
    int lanes;         // vector width in floats
    int accumulators;  // independent accumulator vectors per reduction
    int chunk;         // W elements per parallel task in pointwise kernels
};

inline Knobs knobs(const ScheduleParams &sp, const std::string &kernel, const Target &t) {
    Knobs k;
    k.lanes = sp.get("cpu", kernel, "vector_lanes", t.natural_vector_size<float>());
    k.accumulators = sp.get("cpu", kernel, "accumulators", 4);
    k.chunk = sp.get("cpu", kernel, "chunk", 16384);
    if (k.lanes < 1 || k.accumulators < 1 || k.chunk < k.lanes)
        throw std::runtime_error("cpu." + kernel + ": need lanes >= 1, accumulators >= 1, " +
                                 "chunk >= lanes");
    return k;
}

// Per-channel sums computed at `at`, vectorized along W through an rfactor.
inline void schedule_channel_sums(ChannelSums &s, const LoopLevel &at, const Knobs &k) {
    Var u("u");
    RVar rxo("rxo"), rxi("rxi");
    s.sums.compute_at(at);
    Func partial = s.sums.update()
                       .split(s.r.x, rxo, rxi, k.lanes * k.accumulators, TailStrategy::GuardWithIf)
                       .rfactor(rxi, u);
    partial.compute_at(at).vectorize(u, k.lanes).unroll(u);
    partial.update().vectorize(u, k.lanes).unroll(u);
}

// A 4-D output that consumes per-channel sums: one parallel loop over channels, the sums of
// channel c computed inside it, then the channel written while it is still in cache.
// `side_outputs` are per-channel outputs (saved stats, parameter gradients) fused into the
// same channel loop with compute_with, so the sums are computed once for all outputs.
inline void schedule_per_channel(Func out, ChannelSums &s, const std::vector<Func> &side_outputs,
                                 const Vars &v, const Knobs &k) {
    out.reorder(v.w, v.h, v.n, v.c).parallel(v.c).vectorize(v.w, k.lanes,
                                                            TailStrategy::GuardWithIf);
    schedule_channel_sums(s, LoopLevel(out, v.c), k);
    for (Func f : side_outputs) f.parallel(v.c).compute_with(out, v.c);
}

// Per-channel outputs only (parameter gradients without grad_input).
inline void schedule_reduction_only(const std::vector<Func> &outs, ChannelSums &s, const Vars &v,
                                    const Knobs &k) {
    Func first = outs.front();
    first.parallel(v.c);
    schedule_channel_sums(s, LoopLevel(first, v.c), k);
    for (size_t i = 1; i < outs.size(); ++i) Func(outs[i]).parallel(v.c).compute_with(first, v.c);
}

// A pointwise 4-D output: W split into chunks, every (chunk, h, c, n) a parallel task.
inline void schedule_pointwise(Func out, Func per_channel, const Vars &v, const Knobs &k) {
    Var wo("wo"), wi("wi"), row("row"), plane("plane"), task("task");
    out.split(v.w, wo, wi, k.chunk, TailStrategy::GuardWithIf)
        .vectorize(wi, k.lanes, TailStrategy::GuardWithIf)
        .fuse(wo, v.h, row)
        .fuse(row, v.c, plane)
        .fuse(plane, v.n, task)
        .parallel(task);
    if (per_channel.defined()) per_channel.compute_root();
}

inline void schedule_train_forward(TrainForward &p, const Vars &v, const ScheduleParams &sp,
                                   const Target &t) {
    Knobs k = knobs(sp, "train_fwd", t);
    p.scale.compute_at(p.y, v.c);
    schedule_per_channel(p.y, p.stats.s,
                         {p.saved_mean, p.saved_invstd, p.running_mean_out, p.running_var_out}, v,
                         k);
}

inline void schedule_eval_forward(EvalForward &p, const Vars &v, const ScheduleParams &sp,
                                  const Target &t) {
    schedule_pointwise(p.y, p.scale, v, knobs(sp, "eval_fwd", t));
}

inline void schedule_backward(Backward &p, const std::string &kernel, const Vars &v,
                              const ScheduleParams &sp, const Target &t) {
    Knobs k = knobs(sp, kernel, t);
    if (!p.training) p.invstd.compute_root();  // sqrt once per channel, not per element
    std::vector<Func> params;
    if (p.grad_weight.defined()) params = {p.grad_weight, p.grad_bias};
    if (p.grad_input.defined() && p.sums.sums.defined()) {
        schedule_per_channel(p.grad_input, p.sums, params, v, k);
    } else if (p.grad_input.defined()) {
        schedule_pointwise(p.grad_input, Func(), v, k);
    } else {
        schedule_reduction_only(params, p.sums, v, k);
    }
}

}  // namespace bn2d::cpu
