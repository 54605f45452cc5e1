// The batchnorm2d algorithm, written once as Halide Funcs: no scheduling and no Generator code in
// this file, so it can be used as a stage of any Halide pipeline.
//
// The Generators (generators/bn2d_generators.cpp) build the AOT kernels from these functions, and
// the schedules in schedules/ place the Funcs they return. An image pipeline can call the same
// functions on its own Funcs: every Func and RDom is named `<prefix><stage>`, so two batch norms
// in one pipeline (prefixes "bn1_", "bn2_") never collide.
//
// Indexing is logical and layout-free: x(w, h, c, n) for an NCHW tensor whose innermost
// dimension is W. The runtime may present a dense H x W plane as one spatial row of H*W
// elements (w extent H*W, h extent 1); the algorithm does not care.
#pragma once

#include <string>

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

// Extents of the logical tensor (Exprs, usually read from the input buffer), the type the
// per-channel sums accumulate in, and the prefix of every Func name.
//
// Accumulator: float64 by default on every target (as ATen's CPU kernels do). With float32 sums,
// a channel whose shift sample K is an outlier (a hot pixel 1000 std away) brings the
// cancellation back: measured on the GPU schedule (float32, tree of partial sums) 5e-4 to 3e-2
// relative variance error for 4K to 1M elements; float64 gives < 1e-7. A memory-bound op has the
// ALU time to spare on CPUs and on the GPUs we target (Ampere and Hopper run float64 at half
// rate); float32 stays available.
struct Extents {
    Expr W, H, C, N;
    Halide::Type acc = Halide::Float(64);
    std::string prefix;  // "bn1_" -> Funcs "bn1_batch_mean", "bn1_y", ...

    Expr count() const { return Halide::cast<float>(W * H * N); }  // M = N*H*W per channel
    Expr count_acc() const { return Halide::cast(acc, W * H * N); }
    Func func(const std::string &stage) const { return Func(prefix + stage); }
};

// Per-channel sums over (n, h, w). A Tuple-valued Func: {sum of a, sum of b}.
// The reduction domain is returned too, so a schedule can split and rfactor it.
struct ChannelSums {
    Func sums;  // sums(c) = {sum_a, sum_b}
    RDom r;     // r.x: w, r.y: h, r.z: n
};

inline ChannelSums channel_sums(const std::string &stage, Func a, Func b, const Extents &e,
                                const Vars &v) {
    ChannelSums out{e.func(stage), RDom(0, e.W, 0, e.H, 0, e.N, e.prefix + stage + "_r")};
    const RDom &r = out.r;
    out.sums(v.c) = Tuple(Halide::cast(e.acc, 0), Halide::cast(e.acc, 0));
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
// (rfactor), which is a pairwise-like summation and keeps the rounding error small.
struct BatchStats {
    Func shift;     // K(c)
    ChannelSums s;  // {S1, S2}
    Func mean;      // mean(c)
    Func var;       // biased variance var(c)
};

inline BatchStats batch_stats(Func x, const Extents &e, const Vars &v) {
    BatchStats st;
    st.shift = e.func("shift");
    st.shift(v.c) = x(0, 0, v.c, 0);
    Func centered = e.func("centered"), centered_sq = e.func("centered_sq");
    // The difference is taken in float32 (exact when x and K are close), then widened.
    centered(v.w, v.h, v.c, v.n) = Halide::cast(e.acc, x(v.w, v.h, v.c, v.n) - st.shift(v.c));
    centered_sq(v.w, v.h, v.c, v.n) = centered(v.w, v.h, v.c, v.n) * centered(v.w, v.h, v.c, v.n);
    st.s = channel_sums("stat_sums", centered, centered_sq, e, v);

    Expr M = e.count_acc();
    Expr shifted_mean = st.s.sums(v.c)[0] / M;
    st.mean = e.func("batch_mean");
    st.mean(v.c) = Halide::cast<float>(Halide::cast(e.acc, st.shift(v.c)) + shifted_mean);
    st.var = e.func("batch_var");
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

inline Expr unbiased(Expr var, const Extents &e) {
    Expr M = e.count();
    return var * (M / (M - 1.0f));
}

// Backward reductions, per channel: {sum(dy), sum(dy * (x - mean))}. grad_bias is the first,
// grad_weight the second times invstd. Shared by the training and eval backward, which differ
// only in where mean and invstd come from (the batch, or the running statistics).
inline ChannelSums grad_sums(Func x, Func dy, Func mean, const Extents &e, const Vars &v) {
    Func dy_acc = e.func("dy_acc"), dy_centered = e.func("dy_centered");
    dy_acc(v.w, v.h, v.c, v.n) = Halide::cast(e.acc, dy(v.w, v.h, v.c, v.n));
    dy_centered(v.w, v.h, v.c, v.n) =
        dy_acc(v.w, v.h, v.c, v.n) * Halide::cast(e.acc, x(v.w, v.h, v.c, v.n) - mean(v.c));
    return channel_sums("grad_sums", dy_acc, dy_centered, e, v);
}

// Training-mode grad_input, from the saved batch statistics (M = N*H*W):
//   dx = invstd * weight * (dy - mean(dy) - x_hat * mean(dy * x_hat))
// with mean(dy) = S_dy / M and mean(dy * x_hat) = S_dyxc * invstd / M. Rearranged so that the
// per-element work is one fused multiply-add chain over per-channel coefficients:
//   dx = (dy - S_dy/M - (x - mean) * (S_dyxc * invstd^2 / M)) * (invstd * weight)
inline Expr train_grad_input(Expr x, Expr dy, Expr mean, Expr invstd, Expr weight, Expr sum_dy,
                             Expr sum_dy_xc, const Extents &e) {
    Expr M = e.count();
    Expr proj = sum_dy_xc * invstd * invstd / M;
    return (dy - sum_dy / M - (x - mean) * proj) * (invstd * weight);
}

// Eval-mode grad_input: the statistics are constants, so dx = dy * weight * invstd.
inline Expr eval_grad_input(Expr dy, Expr invstd, Expr weight) {
    return dy * (invstd * weight);
}

// ---------------------------------------------------------------------------------------------
// Whole stages. Each returns every Func a schedule may place. An undefined weight or bias Func
// means affine = false: weight acts as 1 and bias as 0.

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
                                  Func running_var, Expr eps, Expr factor, const Extents &e,
                                  const Vars &v) {
    TrainForward p;
    p.stats = batch_stats(x, e, v);
    Func invstd = e.func("invstd");
    invstd(v.c) = inverse_std(p.stats.var(v.c), eps);
    p.scale = e.func("scale");
    p.scale(v.c) = invstd(v.c) * weight_or_one(weight, v.c);

    p.y = e.func("y");
    p.y(v.w, v.h, v.c, v.n) = normalize(x(v.w, v.h, v.c, v.n), p.stats.mean(v.c), p.scale(v.c),
                                        bias_or_zero(bias, v.c));
    p.saved_mean = e.func("saved_mean");
    p.saved_mean(v.c) = p.stats.mean(v.c);
    p.saved_invstd = e.func("saved_invstd");
    p.saved_invstd(v.c) = invstd(v.c);
    p.running_mean_out = e.func("running_mean_out");
    p.running_mean_out(v.c) = running_update(running_mean(v.c), p.stats.mean(v.c), factor);
    p.running_var_out = e.func("running_var_out");
    p.running_var_out(v.c) =
        running_update(running_var(v.c), unbiased(p.stats.var(v.c), e), factor);
    return p;
}

// Eval forward: normalization with the running statistics. Pointwise.
struct EvalForward {
    Func scale;  // invstd(running_var) * weight, per channel
    Func y;
};

inline EvalForward eval_forward(Func x, Func weight, Func bias, Func running_mean,
                                Func running_var, Expr eps, const Extents &e, const Vars &v) {
    EvalForward p;
    p.scale = e.func("scale");
    p.scale(v.c) = inverse_std(running_var(v.c), eps) * weight_or_one(weight, v.c);
    p.y = e.func("y");
    p.y(v.w, v.h, v.c, v.n) = normalize(x(v.w, v.h, v.c, v.n), running_mean(v.c), p.scale(v.c),
                                        bias_or_zero(bias, v.c));
    return p;
}

// Backward, training or eval, with an output mask (like ATen's native_batch_norm_backward).
//   training: `mean` and `stat` are the forward's saved batch mean and invstd.
//   eval:     `mean` and `stat` are running_mean and running_var; invstd is computed here.
// Parameter gradients are added to `grad_weight_in` / `grad_bias_in` when those are defined, as
// autograd accumulates .grad, so a device needs no separate accumulation pass.
struct BackwardRequest {
    bool training = true;
    bool grad_input = true;   // compute dx
    bool grad_params = true;  // compute d weight, d bias
};

struct Backward {
    bool training;
    Func invstd;       // per channel; computed from running_var in eval mode
    ChannelSums sums;  // {sum(dy), sum(dy * (x - mean))}; undefined when not needed
    Func grad_input, grad_weight, grad_bias;
};

inline Backward backward(const BackwardRequest &want, Func x, Func dy, Func mean, Func stat,
                         Expr eps, Func weight, Func grad_weight_in, Func grad_bias_in,
                         const Extents &e, const Vars &v) {
    Backward p;
    p.training = want.training;
    if (want.training) {
        p.invstd = stat;
    } else {
        p.invstd = e.func("invstd");
        p.invstd(v.c) = inverse_std(stat(v.c), eps);
    }
    // Eval-mode grad_input is pointwise; everything else needs the per-channel sums.
    if (want.grad_params || want.training) p.sums = grad_sums(x, dy, mean, e, v);
    if (want.grad_input) {
        Expr w = weight_or_one(weight, v.c);
        Expr x_ = x(v.w, v.h, v.c, v.n), dy_ = dy(v.w, v.h, v.c, v.n);
        p.grad_input = e.func("grad_input");
        p.grad_input(v.w, v.h, v.c, v.n) =
            want.training ? train_grad_input(x_, dy_, mean(v.c), p.invstd(v.c), w,
                                             Halide::cast<float>(p.sums.sums(v.c)[0]),
                                             Halide::cast<float>(p.sums.sums(v.c)[1]), e)
                          : eval_grad_input(dy_, p.invstd(v.c), w);
    }
    if (want.grad_params) {
        Expr d_bias = Halide::cast<float>(p.sums.sums(v.c)[0]);
        Expr d_weight = Halide::cast<float>(p.sums.sums(v.c)[1]) * p.invstd(v.c);
        p.grad_bias = e.func("grad_bias");
        p.grad_bias(v.c) = grad_bias_in.defined() ? grad_bias_in(v.c) + d_bias : d_bias;
        p.grad_weight = e.func("grad_weight");
        p.grad_weight(v.c) = grad_weight_in.defined() ? grad_weight_in(v.c) + d_weight : d_weight;
    }
    return p;
}

}  // namespace bn2d
