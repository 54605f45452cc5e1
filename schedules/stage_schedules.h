// Schedules for a batch norm that is one stage of a caller's CPU pipeline (installed with the
// algorithm as bn2d::halide).
//
// The kernel schedules (cpu_schedules.h) place a batch norm as a pipeline's output. These place
// it inside someone else's pipeline, where another stage consumes it (a ReLU, a convolution):
//  * The per-channel values (scale, mean, the training statistics) are a few numbers per
//    channel: computed once, before the pixels (compute_root).
//  * The normalization is pointwise, so by default it is inlined into its consumer: no buffer
//    and no pass of its own, one multiply-add per element inside the consumer's loop. A
//    consumer that reads each value many times (a 3x3 convolution reads it 9 times) may store a
//    tile of it instead (Placement::y_at = a loop level of the consumer), or make it a stage of
//    its own (LoopLevel::root()).
//  * Training statistics are a reduction over the whole tensor, so they are always a stage of
//    their own: vectorized along W through an rfactor, parallel over channels. Their input
//    should be computed at root (or be a pipeline input): it is read twice, by the sums and by
//    the normalization.
// Like Halide's camera_pipe, whose Demosaic is a generator used as a stage of another: the
// caller schedules its own stages around these.
#pragma once

#include "Halide.h"
#include "bn2d_algorithm.h"

namespace bn2d::stage {

struct Placement {
    // Where the normalized output (y, or grad_input in backward) is computed:
    // LoopLevel::inlined() (default) fuses it into its consumer; LoopLevel(consumer, var) stores
    // a tile of it at that loop; LoopLevel::root() makes it a stage of its own.
    Halide::LoopLevel y_at = Halide::LoopLevel::inlined();
    int vector_lanes = 8;  // floats per vector along W: 8 for AVX2, 16 for AVX-512
    bool parallel = true;  // channels in parallel (the statistics, and a root output)
};

// The pointwise output at its placement, vectorized along W when it is computed anywhere.
inline void place_output(Halide::Func out, const Vars &v, const Placement &where) {
    Halide::LoopLevel at = where.y_at;
    at.lock();  // a LoopLevel is inspected only once locked (its Func and Var are final here)
    if (at.is_inlined()) return;
    out.compute_at(at).vectorize(v.w, where.vector_lanes, Halide::TailStrategy::GuardWithIf);
    if (at.is_root() && where.parallel) out.parallel(v.c);
}

// Per-channel sums as a stage of their own: W lanes through an rfactor (one vector of partial
// sums per channel, reduced once at the end), channels in parallel.
inline void schedule_sums(ChannelSums &s, const Placement &where) {
    s.require_one_level("stage sums");
    Halide::Var c(s.sums.args()[0].name()), lane("lane");
    Halide::RVar rxo("rxo"), rxi("rxi");
    s.sums.compute_root();
    Halide::Func partial =
        s.sums.update()
            .split(s.r.x, rxo, rxi, where.vector_lanes, Halide::TailStrategy::GuardWithIf)
            .rfactor(rxi, lane);
    partial.compute_at(s.sums, c).vectorize(lane);
    partial.update().reorder(lane, rxo, s.r.y, s.r.z).vectorize(lane);
    if (where.parallel) s.sums.update().parallel(c);
}

inline void schedule_eval_forward(EvalForward &p, const Vars &v, const Placement &where = {}) {
    p.scale.compute_root();
    place_output(p.y, v, where);
}

// The per-channel outputs (saved_mean, saved_invstd, running_*_out) are computed at root when
// the caller makes them pipeline outputs, and inlined (free: per channel) when it does not.
inline void schedule_train_forward(TrainForward &p, const Vars &v, const Placement &where = {}) {
    schedule_sums(p.stats.s, where);
    p.mean.compute_root();
    p.scale.compute_root();
    place_output(p.y, v, where);
}

inline void schedule_backward(Backward &p, const Vars &v, const Placement &where = {}) {
    p.invstd.compute_root();
    if (p.sums.sums.defined()) schedule_sums(p.sums, where);
    if (p.coefficients.defined()) p.coefficients.compute_root();
    if (p.grad_input.defined()) place_output(p.grad_input, v, where);
}

}  // namespace bn2d::stage
