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

#include <stdexcept>
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

// Extents of the logical tensor (Exprs, usually read from the input buffer), the types, and the
// prefix of every Func name.
//
// Types: `element` is the type of x, y, dy and dx as stored (float32, bfloat16, float16 or
// float64); `compute` the type of the per-element arithmetic and the per-channel values
// (statistics, weight, bias): float32 for 16-bit and 32-bit tensors, as PyTorch computes in
// its "opmath" type, float64 for float64. Inputs are widened on load and outputs rounded once,
// on store. Per-channel sums accumulate in `acc`, never narrower than float32.
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
    Halide::Type element = Halide::Float(32);
    Halide::Type compute = Halide::Float(32);
    // The gradient sums in two levels (grad_sums, channel_sums) when > 0: each row summed in
    // `compute` in this many interleaved partial sums, the partial sums added in `acc`.
    int row_lanes = 0;

    // M = N*H*W per channel, in 64 bits: it reaches 2^31 in large_buffers kernels.
    Expr values_per_channel() const { return Halide::cast<int64_t>(W) * H * N; }
    Expr count() const { return Halide::cast(compute, values_per_channel()); }
    Expr count_acc() const { return Halide::cast(acc, values_per_channel()); }
    Func func(const std::string &stage) const { return Func(prefix + stage); }
    Expr one() const { return Halide::cast(compute, 1); }
    // Load into the accumulator type (exact: the accumulator is at least as wide).
    Expr wide(Expr e) const { return Halide::cast(acc, in(std::move(e))); }

    // Load: widen a stored element (or any per-channel value) to the compute type.
    Expr in(Expr e) const {
        if (element.is_bfloat() && e.type() == Halide::UInt(16)) return bf16_bits_to_float(e);
        return Halide::cast(compute, std::move(e));
    }
    // Store: round a computed value to the element type, once.
    Expr out(Expr e) const {
        if (element.is_bfloat()) return float_to_bf16_bits(e);
        return Halide::cast(element, std::move(e));
    }
    Halide::Type storage() const { return storage_type(element); }

    // The storage type of an element: bfloat16 tensors are held as their uint16 bit patterns
    // and converted here rather than by Halide's bfloat16 type, which crashes the PTX back end
    // in Halide 21 (an LLVM "Invalid cast!" assertion) and needs cl_khr_fp16 on OpenCL.
    static Halide::Type storage_type(Halide::Type element) {
        return element.is_bfloat() ? Halide::UInt(16) : element;
    }

    static Expr bf16_bits_to_float(Expr bits) {
        return Halide::reinterpret(Halide::Float(32), Halide::cast(Halide::UInt(32), bits) << 16);
    }
    // Round to nearest even, NaN to the canonical quiet NaN 0x7fc0: c10::BFloat16's rounding.
    static Expr float_to_bf16_bits(Expr f) {
        Expr bits = Halide::reinterpret(Halide::UInt(32), Halide::cast(Halide::Float(32), f));
        Expr rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
        Expr is_nan = (bits & 0x7fffffff) > 0x7f800000;
        return Halide::cast(
            Halide::UInt(16),
            Halide::select(is_nan, Halide::cast(Halide::UInt(32), 0x7fc0), rounded));
    }
};

// Per-channel sums over (n, h, w). A Tuple-valued Func: {sum of a, sum of b}.
// The reduction domains are returned too, so a schedule can split and rfactor them.
// One level (Extents::row_lanes = 0): sums adds every value in acc, over r (r.x: w, r.y: h,
// r.z: n). a and b are in acc.
// Two levels (row_lanes = U > 0): each row is summed in the compute type (a and b's) into U
// interleaved partial sums, rows(u, h, c, n) = sum of the row's values at w = k*U + u (its
// whole groups of U over row_groups, then the W % U left over row_tail, into lanes 0..), and
// sums adds the partial sums in acc, over r (r.x: u, r.y: h, r.z: n). A row is U lanes wide
// so that a schedule keeps them in vector registers, and widens them once per row.
struct ChannelSums {
    Func sums;  // sums(c) = {sum_a, sum_b}
    RDom r;
    Expr W, H, N;  // the extents summed over
    int row_lanes = 0;
    Func rows;  // two levels only
    RDom row_groups, row_tail;

    bool two_level() const { return row_lanes > 0; }
    // For the schedules that place one level only (GPU, NHWC, stages in a user's pipeline).
    void require_one_level(const char *schedule) const {
        if (two_level())
            throw std::logic_error(std::string(schedule) +
                                   ": one-level sums only (Extents::row_lanes = 0)");
    }
};

inline ChannelSums channel_sums(const std::string &stage, Func a, Func b, const Extents &e,
                                const Vars &v) {
    ChannelSums out{e.func(stage)};
    out.W = e.W, out.H = e.H, out.N = e.N, out.row_lanes = e.row_lanes;
    Func &sums = out.sums;
    const std::string name = e.prefix + stage;
    sums(v.c) = Tuple(Halide::cast(e.acc, 0), Halide::cast(e.acc, 0));
    if (!out.two_level()) {
        const RDom &r = out.r = RDom(0, e.W, 0, e.H, 0, e.N, name + "_r");
        sums(v.c) =
            Tuple(sums(v.c)[0] + a(r.x, r.y, v.c, r.z), sums(v.c)[1] + b(r.x, r.y, v.c, r.z));
        return out;
    }
    const int U = e.row_lanes;
    Func &rows = out.rows = e.func(stage + "_rows");
    Expr groups = e.W / U;
    const RDom &k = out.row_groups = RDom(0, groups, name + "_k");
    const RDom &t = out.row_tail = RDom(0, e.W % U, name + "_t");
    Var u("u");
    // Rows past the last read the last: a schedule that cuts the rows into blocks with a guard
    // computes the rows of a block before the guard drops the ones past the end.
    Expr h = Halide::min(v.h, e.H - 1);
    auto add = [&](Expr lane, Expr w) {
        rows(lane, v.h, v.c, v.n) = Tuple(rows(lane, v.h, v.c, v.n)[0] + a(w, h, v.c, v.n),
                                          rows(lane, v.h, v.c, v.n)[1] + b(w, h, v.c, v.n));
    };
    rows(u, v.h, v.c, v.n) = Tuple(Halide::cast(e.compute, 0), Halide::cast(e.compute, 0));
    add(u, k * U + u);
    add(t, groups * U + t);
    const RDom &r = out.r = RDom(0, U, 0, e.H, 0, e.N, name + "_r");
    sums(v.c) = Tuple(sums(v.c)[0] + Halide::cast(e.acc, rows(r.x, r.y, v.c, r.z)[0]),
                      sums(v.c)[1] + Halide::cast(e.acc, rows(r.x, r.y, v.c, r.z)[1]));
    return out;
}

// Batch statistics of one channel: mean and biased variance, with the Funcs a schedule places.
// NaN and Inf propagate as in PyTorch: a NaN in a channel makes its mean and variance NaN; a
// +Inf (-Inf) makes the mean +Inf (-Inf) and the variance NaN.
//
// Method: shifted one-pass sums. Each channel is shifted by one of its own samples,
// K = x(0, 0, c, 0), then S1 = sum(x - K) and S2 = sum((x - K)^2) are accumulated together and
// mean = K + S1/M, var = S2/M - (S1/M)^2.
// Why: the naive E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std (both terms are
// ~mean^2). After the shift, x - K is of the order of the spread, so the cancellation is
// bounded by how far K sits from the mean, a few standard deviations for real data. A two-pass
// (mean, then sum of squared deviations) is as robust but reads the data once more; the
// shifted form reads it once, which matters for a memory-bound op. Schedules split the sums
// into vector lanes and row blocks (rfactor), a pairwise-like summation.
// x - K is taken in the accumulator type, where it is exact (two float32 values differ by a
// float64 exactly): taken in float32 it rounds whenever x and K are more than a factor of two
// apart, and on a 1080p channel whose mean is near zero those roundings left a 1.4e-5 relative
// error in the mean (libtorch, which sums x itself in float64: 2e-8).
// mean and var stay in the accumulator type: every per-channel value derived from them
// (invstd, scale, running statistics) is computed there and rounded once.
struct BatchStats {
    Func shift;     // K(c)
    ChannelSums s;  // {S1, S2}
    Func mean;      // mean(c), accumulator type
    Func var;       // biased variance var(c), accumulator type
};

inline BatchStats batch_stats(Func x, const Extents &e, const Vars &v) {
    BatchStats st;
    st.shift = e.func("shift");
    // A non-finite first sample is no shift (K = 0): the sums then carry the Inf or NaN the
    // way PyTorch's do (mean Inf for a +Inf channel, not Inf - Inf = NaN).
    // Test and select on the bits: Halide's default float semantics let LLVM assume no NaN or
    // Inf, and fold a floating-point is_finite() or select away.
    Expr first = e.wide(x(0, 0, v.c, 0));
    const Halide::Type bits_type = e.acc.bits() == 64 ? Halide::UInt(64) : Halide::UInt(32);
    Expr exponent_mask = e.acc.bits() == 64 ? Halide::Expr(uint64_t(0x7ff0000000000000ull))
                                            : Halide::Expr(uint32_t(0x7f800000u));
    Expr bits = Halide::reinterpret(bits_type, first);
    st.shift(v.c) =
        Halide::reinterpret(e.acc, Halide::select((bits & exponent_mask) != exponent_mask, bits,
                                                  Halide::cast(bits_type, 0)));
    Func centered = e.func("centered"), centered_sq = e.func("centered_sq");
    centered(v.w, v.h, v.c, v.n) = e.wide(x(v.w, v.h, v.c, v.n)) - st.shift(v.c);
    centered_sq(v.w, v.h, v.c, v.n) = centered(v.w, v.h, v.c, v.n) * centered(v.w, v.h, v.c, v.n);
    st.s = channel_sums("stat_sums", centered, centered_sq, e, v);

    Expr M = e.count_acc();
    Expr shifted_mean = st.s.sums(v.c)[0] / M;
    st.mean = e.func("batch_mean");
    st.mean(v.c) = st.shift(v.c) + shifted_mean;
    st.var = e.func("batch_var");
    // Rounding can push a zero variance a hair below zero; clamp, as var is a square. But
    // max(NaN, 0) is 0, and a channel with a NaN (or Inf - Inf) must keep a NaN variance (and
    // running_var), as in PyTorch: NaN passes explicitly (strict_float, as above; a plain
    // select is simplified into the max).
    Expr var = st.s.sums(v.c)[1] / M - shifted_mean * shifted_mean;
    st.var(v.c) = Halide::strict_float(
        Halide::select(Halide::is_nan(var), var, Halide::max(var, Halide::cast(e.acc, 0))));
    return st;
}

// 1 / sqrt(var + eps), as PyTorch computes invstd.
inline Expr inverse_std(Expr var, Expr eps) {
    return Halide::cast(var.type(), 1) / Halide::sqrt(var + Halide::cast(var.type(), eps));
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
    factor = Halide::cast(batch.type(), factor);
    return factor * batch + (Halide::cast(batch.type(), 1) - factor) * running;
}

// M: the number of values the variance is over, in var's type.
inline Expr unbiased(Expr var, Expr M) { return var * (M / (M - Halide::cast(var.type(), 1))); }

// Backward reductions, per channel: {sum(dy), sum(dy * (x - mean))}. grad_bias is the first,
// grad_weight the second times invstd. Shared by the training and eval backward, which differ
// only in where mean and invstd come from (the batch, or the running statistics).
// In one level (acc) x - mean is exact, like the statistics' x - K. In two levels
// (Extents::row_lanes: CPU kernels of float32 and 16-bit tensors, NCHW) each product and each
// row's partial sums round in float32, and the partial sums add in float64. Unlike the
// statistics' shifted sums these have no cancellation for a float32 rounding to amplify: mean
// is a stored float32, so x - mean rounds once, relative to itself, and a row of R values adds
// R/U terms per lane. It cuts the per-element work from 12 vector instructions per 16 values
// (widen dy and x, subtract, multiply, two adds, in 8-lane float64) to 3; the parameter
// gradients stay within 2e-8 of the sum of their terms' magnitudes (README, Numerics).
inline ChannelSums grad_sums(Func x, Func dy, Func mean, const Extents &e, const Vars &v) {
    const Halide::Type t = e.row_lanes > 0 ? e.compute : e.acc;
    auto load = [&](Expr stored) { return Halide::cast(t, e.in(std::move(stored))); };
    Func dy_term = e.func("dy_term"), dy_centered = e.func("dy_centered");
    dy_term(v.w, v.h, v.c, v.n) = load(dy(v.w, v.h, v.c, v.n));
    dy_centered(v.w, v.h, v.c, v.n) =
        dy_term(v.w, v.h, v.c, v.n) * (load(x(v.w, v.h, v.c, v.n)) - load(mean(v.c)));
    return channel_sums("grad_sums", dy_term, dy_centered, e, v);
}

// Training-mode grad_input, from the saved batch statistics (M = N*H*W):
//   dx = invstd * weight * (dy - mean(dy) - x_hat * mean(dy * x_hat))
// with mean(dy) = S_dy / M and mean(dy * x_hat) = S_dyxc * invstd / M. Rearranged so that the
// per-element work is one multiply-add chain over three per-channel coefficients:
//   dx = (dy - shift - (x - mean) * proj) * scale,
//   shift = S_dy / M, proj = S_dyxc * invstd^2 / M, scale = invstd * weight.
// Eval mode: the statistics are constants, so dx = dy * scale (shift = proj = 0).
// The coefficients are computed in the accumulator type and rounded once: with two values per
// channel dx is a difference of two nearly equal terms (~eps / var of each), which amplifies
// every rounding of invstd^2 (measured with float32 coefficients: 2x to 10x libtorch's error).
struct GradInputCoefficients {
    Expr shift, proj, scale;
};

// M: the values per channel the sums are over (all processes' in a synchronized backward).
inline GradInputCoefficients train_grad_coefficients(Expr invstd, Expr weight, Expr sum_dy,
                                                     Expr sum_dy_xc, Expr M, const Extents &e) {
    return {e.in(sum_dy / M), e.in(sum_dy_xc * invstd * invstd / M), e.in(invstd * weight)};
}

// ---------------------------------------------------------------------------------------------
// Fusions: what follows the normalization in ResNet-style networks, y = relu(bn(x) + z)
// (oneDNN's fuse_norm_relu and fuse_norm_add_relu, cuDNN's BatchNormalizationEx).
// The switches are Exprs: the AOT kernels take them as run-time bools, so one library serves
// plain, ReLU and add + ReLU calls; a pipeline may pass constants. When the residual is not
// added, the runtime passes x itself as z: the loads hit the cache lines of x just read, so the
// plain op moves no extra byte (measured in bench/, see the README).
//
// NaN and signed zeros as PyTorch's composition: relu(NaN) = NaN, and the ReLU's gradient
// passes where y > 0 or y is NaN (threshold_backward(dy, y, 0): zero where y <= 0). Both are
// tested on the bits, and selected as integers: Halide's default float semantics let LLVM
// assume no NaN, which may fold a float comparison or a float select.
inline Expr select_float(Expr condition, Expr a, Expr b) {
    const Halide::Type u = Halide::UInt(a.type().bits());
    return Halide::reinterpret(
        a.type(), Halide::select(condition, Halide::reinterpret(u, a), Halide::reinterpret(u, b)));
}
// f <= 0 (either zero, or negative and not NaN); false for NaN.
inline Expr not_positive(Expr f) {
    const int n = f.type().bits();
    const Halide::Type u = Halide::UInt(n);
    Expr bits = Halide::reinterpret(u, f);
    Expr magnitude = (bits << 1) >> 1;
    Expr infinity = n == 64 ? Expr(uint64_t(0x7ff0000000000000ull)) : Expr(uint32_t(0x7f800000u));
    Expr negative = (bits >> (n - 1)) == Halide::cast(u, 1);
    return magnitude == Halide::cast(u, 0) || (negative && magnitude <= infinity);
}
inline Expr zero_of(const Expr &like) { return Halide::cast(like.type(), 0); }

// Switches are bool Exprs: a Param<bool> or GeneratorInput<bool>, or Halide::cast<bool>(1)
// (Expr(true) is an int).
struct Epilogue {
    Func residual;      // z, shaped like x; undefined: none
    Expr add_residual;  // bool; undefined: true when the residual is defined
    Expr relu;          // bool; undefined: no ReLU
};

// y in the compute type, then the epilogue: + z when added, then the ReLU when on.
inline Expr apply_epilogue(Expr y, const Epilogue &ep, const Expr &w, const Expr &h, const Expr &c,
                           const Expr &n, const Extents &e) {
    if (ep.residual.defined()) {
        Expr with_z = y + e.in(ep.residual(w, h, c, n));
        y = ep.add_residual.defined() ? select_float(ep.add_residual, with_z, y) : with_z;
    }
    if (ep.relu.defined()) y = select_float(ep.relu && not_positive(y), zero_of(y), y);
    return y;
}

// The ReLU of a fused forward, seen from backward: the gradient reaching the batch norm is
// dy where the forward's output y > 0 (or NaN), else 0. y is what forward wrote (rounded to the
// element type), so the mask is the one the forward's ReLU applied.
struct ReluGrad {
    Func y;     // the forward's output; undefined: no ReLU
    Expr relu;  // bool; undefined: true when y is defined
};

// ---------------------------------------------------------------------------------------------
// Whole stages. Each returns every Func a schedule may place. An undefined weight or bias Func
// means affine = false: weight acts as 1 and bias as 0.

inline Expr weight_or_one(const Func &weight, const Expr &c, const Extents &e) {
    return weight.defined() ? e.in(weight(c)) : e.one();
}
inline Expr bias_or_zero(const Func &bias, const Expr &c, const Extents &e) {
    return bias.defined() ? e.in(bias(c)) : Halide::cast(e.compute, 0);
}

// What training forward derives per channel from the batch mean and biased variance
// (accumulator type) over M values: the mean it normalizes with and saves, invstd, and the
// running-statistics update with exponential_average_factor `factor`.
struct StatisticsOutputs {
    Func mean;    // compute type
    Func invstd;  // accumulator type
    Func saved_invstd, running_mean_out, running_var_out;
};

inline StatisticsOutputs statistics_outputs(Func mean, Func var, Expr M, Func running_mean,
                                            Func running_var, Expr eps, Expr factor,
                                            const Extents &e, const Vars &v) {
    StatisticsOutputs o;
    o.invstd = e.func("invstd");
    o.invstd(v.c) = inverse_std(var(v.c), eps);
    o.mean = e.func("mean");
    o.mean(v.c) = e.in(mean(v.c));
    o.saved_invstd = e.func("saved_invstd");
    o.saved_invstd(v.c) = e.in(o.invstd(v.c));
    o.running_mean_out = e.func("running_mean_out");
    o.running_mean_out(v.c) = e.in(running_update(e.wide(running_mean(v.c)), mean(v.c), factor));
    o.running_var_out = e.func("running_var_out");
    o.running_var_out(v.c) =
        e.in(running_update(e.wide(running_var(v.c)), unbiased(var(v.c), M), factor));
    return o;
}

// Training forward: batch statistics, normalized output, saved statistics for backward and
// the running-statistics update with exponential_average_factor `factor`.
struct TrainForward {
    BatchStats stats;
    Epilogue epilogue;  // its switches, for schedules to specialize on
    Func mean;          // the batch mean in the compute type, per channel
    Func scale;         // invstd * weight, per channel
    Func y, saved_mean, saved_invstd, running_mean_out, running_var_out;
};

inline TrainForward train_forward(Func x, Func weight, Func bias, Func running_mean,
                                  Func running_var, Expr eps, Expr factor, const Extents &e,
                                  const Vars &v, const Epilogue &epilogue = {}) {
    TrainForward p;
    p.epilogue = epilogue;
    p.stats = batch_stats(x, e, v);
    StatisticsOutputs o = statistics_outputs(p.stats.mean, p.stats.var, e.count_acc(), running_mean,
                                             running_var, eps, factor, e, v);
    p.scale = e.func("scale");
    p.scale(v.c) = e.in(o.invstd(v.c) * Halide::cast(e.acc, weight_or_one(weight, v.c, e)));
    p.mean = o.mean;

    p.y = e.func("y");
    p.y(v.w, v.h, v.c, v.n) =
        e.out(apply_epilogue(normalize(e.in(x(v.w, v.h, v.c, v.n)), p.mean(v.c), p.scale(v.c),
                                       bias_or_zero(bias, v.c, e)),
                             epilogue, v.w, v.h, v.c, v.n, e));
    p.saved_mean = e.func("saved_mean");
    p.saved_mean(v.c) = p.mean(v.c);
    p.saved_invstd = o.saved_invstd;
    p.running_mean_out = o.running_mean_out;
    p.running_var_out = o.running_var_out;
    return p;
}

// Eval forward: normalization with the running statistics. Pointwise.
struct EvalForward {
    Epilogue epilogue;  // its switches, for schedules to specialize on
    Func scale;         // invstd(running_var) * weight, per channel
    Func y;
};

inline EvalForward eval_forward(Func x, Func weight, Func bias, Func running_mean, Func running_var,
                                Expr eps, const Extents &e, const Vars &v,
                                const Epilogue &epilogue = {}) {
    EvalForward p;
    p.epilogue = epilogue;
    p.scale = e.func("scale");
    p.scale(v.c) = e.in(inverse_std(e.wide(running_var(v.c)), eps) *
                        Halide::cast(e.acc, weight_or_one(weight, v.c, e)));
    p.y = e.func("y");
    p.y(v.w, v.h, v.c, v.n) =
        e.out(apply_epilogue(normalize(e.in(x(v.w, v.h, v.c, v.n)), e.in(running_mean(v.c)),
                                       p.scale(v.c), bias_or_zero(bias, v.c, e)),
                             epilogue, v.w, v.h, v.c, v.n, e));
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
    bool sums_out = false;    // also this process's sums, float64 (synchronized backward)
    // Synchronized training backward's grad_input: the sums of every process, global_sums(c) =
    // {sum(dy), sum(dy * (x - mean))}, over `global_count` values per channel; the local sums
    // are then not computed (and grad_params is not available: it needs the local ones).
    Func global_sums;
    Expr global_count;
};

struct Backward {
    bool training;
    Expr relu;          // the ReLU switch when the gradient passes a ReLU, for schedules to
                        // specialize on; undefined otherwise
    Func invstd;        // per channel, accumulator type; from running_var in eval mode
    ChannelSums sums;   // {sum(dy), sum(dy * (x - mean))}; undefined when not needed
    Func coefficients;  // per channel: {shift, proj, scale} of grad_input (training), scale (eval)
    Func grad_input, grad_weight, grad_bias;
    bool synchronized = false;  // sums are the given global ones (no reduction here)
    // BackwardRequest::sums_out: local_sums(c, field) = sum(dy), sum(dy * (x - mean)) for
    // field 0, 1, in float64: the buffer a process all-reduces (C of each).
    Var field{"field"};
    Func local_sums;
};

inline Backward backward(const BackwardRequest &want, Func x, Func dy, Func mean, Func stat,
                         Expr eps, Func weight, Func grad_weight_in, Func grad_bias_in,
                         const Extents &e, const Vars &v, const ReluGrad &relu = {}) {
    Backward p;
    if (relu.y.defined()) {  // dy through the ReLU, in the compute type (e.in leaves it as is)
        Func through_relu = e.func("grad_through_relu");
        Expr y = e.in(relu.y(v.w, v.h, v.c, v.n)), g = e.in(dy(v.w, v.h, v.c, v.n));
        Expr masked = relu.relu.defined() ? relu.relu && not_positive(y) : not_positive(y);
        through_relu(v.w, v.h, v.c, v.n) = select_float(masked, zero_of(g), g);
        dy = through_relu;
        p.relu = relu.relu;
    }
    p.training = want.training;
    p.invstd = e.func("invstd");  // accumulator type
    if (want.training) {
        p.invstd(v.c) = e.wide(stat(v.c));
    } else {
        p.invstd(v.c) = inverse_std(e.wide(stat(v.c)), eps);
    }
    // Eval-mode grad_input is pointwise; everything else needs the per-channel sums.
    Expr M = e.count_acc();
    if (want.global_sums.defined()) {
        p.synchronized = true;
        p.sums.sums = want.global_sums;
        M = Halide::cast(e.acc, want.global_count);
    } else if (want.grad_params || want.training) {
        p.sums = grad_sums(x, dy, mean, e, v);
    }
    if (want.sums_out) {
        p.local_sums = e.func("local_sums");
        p.local_sums(v.c, p.field) =
            Halide::cast(Halide::Float(64),
                         Halide::select(p.field == 0, p.sums.sums(v.c)[0], p.sums.sums(v.c)[1]));
    }
    if (want.grad_input) {
        Expr w = Halide::cast(e.acc, weight_or_one(weight, v.c, e));
        Expr x_ = e.in(x(v.w, v.h, v.c, v.n)), dy_ = e.in(dy(v.w, v.h, v.c, v.n));
        p.grad_input = e.func("grad_input");
        if (want.training) {
            GradInputCoefficients k = train_grad_coefficients(p.invstd(v.c), w, p.sums.sums(v.c)[0],
                                                              p.sums.sums(v.c)[1], M, e);
            p.coefficients = e.func("grad_input_coefficients");
            p.coefficients(v.c) = Tuple(k.shift, k.proj, k.scale);
            Expr shift = p.coefficients(v.c)[0], proj = p.coefficients(v.c)[1];
            Expr scale = p.coefficients(v.c)[2];
            p.grad_input(v.w, v.h, v.c, v.n) =
                e.out((dy_ - shift - (x_ - e.in(mean(v.c))) * proj) * scale);
        } else {
            p.coefficients = e.func("grad_input_coefficients");
            p.coefficients(v.c) = e.in(p.invstd(v.c) * w);
            p.grad_input(v.w, v.h, v.c, v.n) = e.out(dy_ * p.coefficients(v.c));
        }
    }
    if (want.grad_params) {
        Expr d_bias = p.sums.sums(v.c)[0];
        Expr d_weight = p.sums.sums(v.c)[1] * p.invstd(v.c);
        p.grad_bias = e.func("grad_bias");
        p.grad_bias(v.c) =
            e.in(grad_bias_in.defined() ? e.wide(grad_bias_in(v.c)) + d_bias : d_bias);
        p.grad_weight = e.func("grad_weight");
        p.grad_weight(v.c) =
            e.in(grad_weight_in.defined() ? e.wide(grad_weight_in(v.c)) + d_weight : d_weight);
    }
    return p;
}

// ---------------------------------------------------------------------------------------------
// Synchronized batch norm (torch.nn.SyncBatchNorm): a training step's statistics are taken over
// the batches of several processes. The training ops split where the processes communicate;
// each side is the single-process algorithm above.
//   forward:  partial_stats on every process -> all-gather of {count, mean, M2} per channel ->
//             sync_statistics (every process merges the same values in rank order, so all get
//             the same bits, and updates its running statistics) -> eval_forward with the
//             merged mean and variance as its statistics: the same normalization.
//   backward: backward() with sums_out on every process (its grad_weight and grad_bias are its
//             own, as in PyTorch: data-parallel training averages them like every other
//             gradient) -> all-reduce of {sum(dy), sum(dy * (x - mean))} -> backward() with
//             global_sums for grad_input.
// Why {count, mean, M2} and not raw sums: a process's mean and M2 = var * count come from its
// shifted sums (batch_stats), and the merge (Chan, Golub and LeVeque's pairwise update) adds
// M2s and a delta^2 term, never subtracting two large numbers: a mean of 1e4 with a spread of
// 1 cancels neither within a process nor across processes.

// What a process sends, in float64 whatever the accumulator: partial(c, field), field 0, 1, 2 =
// count, mean, M2, so that its buffer is the message (C counts, then C means, then C M2s).
struct PartialStats {
    BatchStats stats;
    Var field{"field"};
    Func partial;
};

inline PartialStats partial_stats(Func x, const Extents &e, const Vars &v) {
    PartialStats p;
    const Halide::Type f64 = Halide::Float(64);
    p.stats = batch_stats(x, e, v);
    p.partial = e.func("partial_stats");
    p.partial(v.c, p.field) = Halide::select(
        p.field == 0, Halide::cast(f64, e.values_per_channel()), p.field == 1,
        Halide::cast(f64, p.stats.mean(v.c)), Halide::cast(f64, p.stats.var(v.c) * e.count_acc()));
    return p;
}

// The partial statistics of `ranks` processes merged per channel, in rank order.
// gathered(c, field, r): process r's partial(c, field).
struct MergedStats {
    Func merged;     // merged(c) = {count, mean, M2}, float64
    RDom r;          // over the processes
    Func mean, var;  // accumulator type; var biased
    Expr count;      // values per channel over all processes, float64
};

inline MergedStats merge_stats(Func gathered, Expr ranks, const Extents &e, const Vars &v) {
    MergedStats m;
    const Halide::Type f64 = Halide::Float(64);
    m.r = RDom(0, ranks, e.prefix + "ranks");
    m.merged = e.func("merged_stats");
    Expr zero = Halide::cast(f64, 0);
    m.merged(v.c) = Tuple(zero, zero, zero);
    Expr n_a = m.merged(v.c)[0], mean_a = m.merged(v.c)[1], m2_a = m.merged(v.c)[2];
    Expr n_b = gathered(v.c, 0, m.r), mean_b = gathered(v.c, 1, m.r);
    Expr m2_b = gathered(v.c, 2, m.r);
    Expr n = n_a + n_b, delta = mean_b - mean_a;
    // An empty batch (n_b = 0) adds nothing, and the first non-empty one is taken as it is
    // (its mean and M2 pass through exactly, NaN and Inf included).
    Expr mean =
        Halide::select(n_b == zero, mean_a, n_a == zero, mean_b, mean_a + delta * (n_b / n));
    Expr m2 = Halide::select(n_b == zero, m2_a, n_a == zero, m2_b,
                             m2_a + m2_b + delta * delta * (n_a * (n_b / n)));
    m.merged(v.c) = Tuple(n, mean, m2);
    m.count = m.merged(v.c)[0];
    m.mean = e.func("merged_mean");
    m.mean(v.c) = Halide::cast(e.acc, m.merged(v.c)[1]);
    m.var = e.func("merged_var");  // M2 is a sum of non-negative terms: no clamp needed
    m.var(v.c) = Halide::cast(e.acc, m.merged(v.c)[2] / m.count);
    return m;
}

// The per-channel part of a synchronized training forward: merged statistics, what is saved
// for backward and the running update (from the unbiased variance over all processes' values).
// `mean` and `var` (compute type) are what eval_forward normalizes with.
struct SyncStatistics {
    MergedStats merged;
    StatisticsOutputs o;  // o.mean: the saved mean
    Func var;             // biased variance, compute type
};

inline SyncStatistics sync_statistics(Func gathered, Expr ranks, Func running_mean,
                                      Func running_var, Expr eps, Expr factor, const Extents &e,
                                      const Vars &v) {
    SyncStatistics p;
    p.merged = merge_stats(gathered, ranks, e, v);
    p.o = statistics_outputs(p.merged.mean, p.merged.var, Halide::cast(e.acc, p.merged.count),
                             running_mean, running_var, eps, factor, e, v);
    p.var = e.func("var");
    p.var(v.c) = e.in(p.merged.var(v.c));
    return p;
}

}  // namespace bn2d
