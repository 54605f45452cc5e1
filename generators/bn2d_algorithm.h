// The batchnorm2d algorithm, written once as Halide Funcs: no scheduling calls in this file.
//
// Every Generator (training forward, eval forward, backward; CPU and GPU) builds its pipeline
// from these functions, and the schedules in schedules/ place the Funcs they return.
//
// Indexing is logical and layout-free: x(w, h, c, n) for an NCHW tensor whose innermost
// dimension is W. The runtime may present a dense H x W plane as one spatial row of H*W
// elements (w extent H*W, h extent 1); the algorithm does not care.
#pragma once

#include "Halide.h"

namespace bn2d {

using Halide::Expr;
using Halide::Func;
using Halide::RDom;
using Halide::Tuple;
using Halide::Var;

// The loop variables every pipeline shares, so schedules can name them.
struct Vars {
    Var w{"w"}, h{"h"}, c{"c"}, n{"n"};
};

// Extents of the logical tensor, as Exprs read from the input buffer, and the type the
// per-channel sums accumulate in: float64 by default on every target (as ATen's CPU kernels
// do). With float32 sums, a channel whose shift sample K is an outlier (a hot pixel 1000 std
// away) brings the cancellation back: measured on the GPU schedule (float32, tree of partial
// sums) 5e-4 to 3e-2 relative variance error for 4K to 1M elements; float64 gives < 1e-7.
// A memory-bound op has the ALU time to spare on CPUs and on the GPUs we target (Ampere and
// Hopper run float64 at half rate); float32 stays available (accumulator=float32).
struct Shape {
    Expr W, H, C, N;
    Halide::Type acc = Halide::Float(32);
    Expr count() const { return Halide::cast<float>(W * H * N); }  // M = N*H*W per channel
    Expr count_acc() const { return Halide::cast(acc, W * H * N); }
};

// Per-channel sums over (n, h, w). A Tuple-valued Func: {sum of a, sum of b}.
// The reduction domain is returned too, so a schedule can split and rfactor it.
struct ChannelSums {
    Func sums;  // sums(c) = {sum_a, sum_b}
    RDom r;     // r.x: w, r.y: h, r.z: n
};

inline ChannelSums channel_sums(const std::string &name, Func a, Func b, const Shape &s,
                                const Vars &v) {
    ChannelSums out{Func(name), RDom(0, s.W, 0, s.H, 0, s.N, name + "_r")};
    const RDom &r = out.r;
    out.sums(v.c) = Tuple(Halide::cast(s.acc, 0), Halide::cast(s.acc, 0));
    out.sums(v.c) = Tuple(out.sums(v.c)[0] + a(r.x, r.y, v.c, r.z),
                          out.sums(v.c)[1] + b(r.x, r.y, v.c, r.z));
    return out;
}

// Batch statistics of one channel: mean and biased variance, with the Funcs a schedule places.
//
// Method: shifted one-pass sums. Each channel is shifted by one of its own samples,
// K = x(0, 0, c, 0), then S1 = sum(x - K) and S2 = sum((x - K)^2) are accumulated together and
// mean = K + S1/M, var = S2/M - (S1/M)^2.
// Why: the naive E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std (both terms are
// ~mean^2). After the shift, x - K is of the order of the spread (and exact in float32 when x
// and K are within a factor of two), so the cancellation is bounded by how far K sits from the
// mean, a few standard deviations for real data. A two-pass (mean, then sum of squared
// deviations) is as robust but reads the data once more; the shifted form reads it once, which
// matters for a memory-bound op. Schedules split the sums into vector lanes and row blocks
// (rfactor), which is a pairwise-like summation and keeps the float32 rounding error small.
struct BatchStats {
    Func shift;     // K(c)
    ChannelSums s;  // {S1, S2}
    Func mean;      // mean(c)
    Func var;       // biased variance var(c)
};

inline BatchStats batch_stats(Func x, const Shape &shape, const Vars &v) {
    BatchStats st;
    st.shift = Func("shift");
    st.shift(v.c) = x(0, 0, v.c, 0);
    Func centered("centered"), centered_sq("centered_sq");
    // The difference is taken in float32 (exact when x and K are close), then widened.
    centered(v.w, v.h, v.c, v.n) = Halide::cast(shape.acc, x(v.w, v.h, v.c, v.n) - st.shift(v.c));
    centered_sq(v.w, v.h, v.c, v.n) = centered(v.w, v.h, v.c, v.n) * centered(v.w, v.h, v.c, v.n);
    st.s = channel_sums("stat_sums", centered, centered_sq, shape, v);

    Expr M = shape.count_acc();
    Expr shifted_mean = st.s.sums(v.c)[0] / M;
    st.mean = Func("batch_mean");
    st.mean(v.c) = Halide::cast<float>(Halide::cast(shape.acc, st.shift(v.c)) + shifted_mean);
    st.var = Func("batch_var");
    // Rounding can push a zero variance a hair below zero; clamp, as var is a square.
    st.var(v.c) = Halide::cast<float>(
        Halide::max(st.s.sums(v.c)[1] / M - shifted_mean * shifted_mean, 0));
    return st;
}

// 1 / sqrt(var + eps), as PyTorch computes invstd.
inline Expr inverse_std(Expr var, Expr eps) {
    return 1.0f / Halide::sqrt(var + eps);
}

// The normalization, the one place it is written:
//   y = (x - mean) * (invstd * weight) + bias
// Kept in (x - mean) form rather than x*alpha + beta (alpha = invstd*weight,
// beta = bias - mean*alpha, as ATen's CPU kernel folds it) because a constant channel then
// gives exactly bias: x - mean is exactly 0, whereas x*alpha + beta leaves the rounding error of
// mean*alpha behind. The extra subtraction is free in a memory-bound op.
inline Expr normalize(Expr x, Expr mean, Expr scale, Expr bias) {
    return (x - mean) * scale + bias;
}

// Running-statistics update, in ATen's order:
//   running = momentum * batch + (1 - momentum) * running,
// with the unbiased variance var * M / (M - 1) for running_var. The caller rejects M == 1.
inline Expr running_update(Expr running, Expr batch, Expr factor) {
    return factor * batch + (1.0f - factor) * running;
}

inline Expr unbiased(Expr var, const Shape &shape) {
    Expr M = shape.count();
    return var * (M / (M - 1.0f));
}

// Backward reductions, per channel: {sum(dy), sum(dy * (x - mean))}. grad_bias is the first,
// grad_weight the second times invstd. Shared by the training and eval backward, which differ
// only in where mean and invstd come from (the batch, or the running statistics).
inline ChannelSums grad_sums(Func x, Func dy, Func mean, const Shape &shape, const Vars &v) {
    Func dy_acc("dy_acc"), dy_centered("dy_centered");
    dy_acc(v.w, v.h, v.c, v.n) = Halide::cast(shape.acc, dy(v.w, v.h, v.c, v.n));
    dy_centered(v.w, v.h, v.c, v.n) =
        dy_acc(v.w, v.h, v.c, v.n) * Halide::cast(shape.acc, x(v.w, v.h, v.c, v.n) - mean(v.c));
    return channel_sums("grad_sums", dy_acc, dy_centered, shape, v);
}

// Training-mode grad_input, from the saved batch statistics (M = N*H*W):
//   dx = invstd * weight * (dy - mean(dy) - x_hat * mean(dy * x_hat))
// with mean(dy) = S_dy / M and mean(dy * x_hat) = S_dyxc * invstd / M. Rearranged so that the
// per-element work is one fused multiply-add chain over per-channel coefficients:
//   dx = (dy - S_dy/M - (x - mean) * (S_dyxc * invstd^2 / M)) * (invstd * weight)
inline Expr train_grad_input(Expr x, Expr dy, Expr mean, Expr invstd, Expr weight, Expr sum_dy,
                             Expr sum_dy_xc, const Shape &shape) {
    Expr M = shape.count();
    Expr proj = sum_dy_xc * invstd * invstd / M;
    return (dy - sum_dy / M - (x - mean) * proj) * (invstd * weight);
}

// Eval-mode grad_input: the statistics are constants, so dx = dy * weight * invstd.
inline Expr eval_grad_input(Expr dy, Expr invstd, Expr weight) {
    return dy * (invstd * weight);
}

// ---------------------------------------------------------------------------------------------
// Whole pipelines. Each returns every Func a schedule may place. An undefined weight or bias
// Func means affine = false: weight acts as 1 and bias as 0.

inline Expr weight_or_one(const Func &weight, const Expr &c) {
    return weight.defined() ? weight(c) : Expr(1.0f);
}
inline Expr bias_or_zero(const Func &bias, const Expr &c) {
    return bias.defined() ? bias(c) : Expr(0.0f);
}

// Training forward: batch statistics, normalized output, saved statistics for backward and
// the running-statistics update with exponential_average_factor `factor`.
struct TrainForward {
    BatchStats stats;
    Func scale;  // invstd * weight, per channel
    Func y, saved_mean, saved_invstd, running_mean_out, running_var_out;
};

inline TrainForward train_forward(Func x, Func weight, Func bias, Func running_mean,
                                  Func running_var, Expr eps, Expr factor, const Shape &shape,
                                  const Vars &v) {
    TrainForward p;
    p.stats = batch_stats(x, shape, v);
    Func invstd("invstd");
    invstd(v.c) = inverse_std(p.stats.var(v.c), eps);
    p.scale = Func("scale");
    p.scale(v.c) = invstd(v.c) * weight_or_one(weight, v.c);

    p.y = Func("y");
    p.y(v.w, v.h, v.c, v.n) = normalize(x(v.w, v.h, v.c, v.n), p.stats.mean(v.c), p.scale(v.c),
                                        bias_or_zero(bias, v.c));
    p.saved_mean = Func("saved_mean");
    p.saved_mean(v.c) = p.stats.mean(v.c);
    p.saved_invstd = Func("saved_invstd");
    p.saved_invstd(v.c) = invstd(v.c);
    p.running_mean_out = Func("running_mean_out");
    p.running_mean_out(v.c) = running_update(running_mean(v.c), p.stats.mean(v.c), factor);
    p.running_var_out = Func("running_var_out");
    p.running_var_out(v.c) =
        running_update(running_var(v.c), unbiased(p.stats.var(v.c), shape), factor);
    return p;
}

// Eval forward: normalization with the running statistics. Pointwise.
struct EvalForward {
    Func scale;  // invstd(running_var) * weight, per channel
    Func y;
};

inline EvalForward eval_forward(Func x, Func weight, Func bias, Func running_mean,
                                Func running_var, Expr eps, const Vars &v) {
    EvalForward p;
    p.scale = Func("scale");
    p.scale(v.c) = inverse_std(running_var(v.c), eps) * weight_or_one(weight, v.c);
    p.y = Func("y");
    p.y(v.w, v.h, v.c, v.n) = normalize(x(v.w, v.h, v.c, v.n), running_mean(v.c), p.scale(v.c),
                                        bias_or_zero(bias, v.c));
    return p;
}

// Backward, training or eval. `mean` and `invstd` are the saved batch statistics (training) or
// come from the running statistics (eval). Which outputs exist is the caller's output mask.
struct Backward {
    bool training;
    Func invstd;       // per-channel; computed from running_var in eval mode
    ChannelSums sums;  // {sum(dy), sum(dy * (x - mean))}; undefined when not needed
    Func grad_input, grad_weight, grad_bias;
};

inline Backward backward(bool training, bool want_input, bool want_params, Func x, Func dy,
                         Func mean, Func invstd, Func weight, const Shape &shape, const Vars &v) {
    Backward p;
    p.training = training;
    p.invstd = invstd;
    // Eval-mode grad_input is pointwise; everything else needs the per-channel sums.
    const bool need_sums = want_params || training;
    if (need_sums) p.sums = grad_sums(x, dy, mean, shape, v);
    if (want_input) {
        Expr w = weight_or_one(weight, v.c);
        Expr x_ = x(v.w, v.h, v.c, v.n), dy_ = dy(v.w, v.h, v.c, v.n);
        p.grad_input = Func("grad_input");
        p.grad_input(v.w, v.h, v.c, v.n) =
            training ? train_grad_input(x_, dy_, mean(v.c), invstd(v.c), w,
                                        Halide::cast<float>(p.sums.sums(v.c)[0]),
                                        Halide::cast<float>(p.sums.sums(v.c)[1]), shape)
                     : eval_grad_input(dy_, invstd(v.c), w);
    }
    if (want_params) {
        p.grad_bias = Func("grad_bias_out");
        p.grad_bias(v.c) = Halide::cast<float>(p.sums.sums(v.c)[0]);
        p.grad_weight = Func("grad_weight_out");
        p.grad_weight(v.c) = Halide::cast<float>(p.sums.sums(v.c)[1]) * invstd(v.c);
    }
    return p;
}

}  // namespace bn2d
