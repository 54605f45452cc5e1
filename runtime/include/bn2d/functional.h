// Stateless batch norm on tensors the caller owns: ATen's native_batch_norm and
// native_batch_norm_backward, for frameworks that keep the module state themselves (the Python
// package's torch.autograd.Function; python/bn2d/torch.py). BatchNorm2d is the stateful module
// built on the same kernels.
//
// Per-channel tensors are [C] vectors, contiguous, float32 (float64 for float64 inputs), on
// the CPU. Every argument is validated before any kernel runs, and a failure (bn2d::Error)
// leaves the running statistics as they were (kernels write their update to scratch, copied
// over only when every kernel succeeded); outputs may then be partly written.
#pragma once

#include <cstdint>

#include "bn2d/batchnorm2d.h"
#include "bn2d/tensor.h"

namespace bn2d::functional {

struct ForwardArgs {
    Tensor input;         // [N, C, H, W], any layout
    Tensor residual;      // optional: out = activation(bn(input) + residual)
    Tensor weight, bias;  // optional (undefined: 1 and 0, affine=False)
    // Optional, both or neither. Required when not training; updated in place when training.
    Tensor running_mean, running_var;
    bool training = true;  // batch statistics; else the running ones
    // The running statistics' update factor, F.batch_norm's `momentum` (the module computes
    // it: momentum, or 1 / num_batches_tracked for a cumulative average).
    double momentum = 0.1;
    double eps = 1e-5;
    Activation activation = Activation::none;
    Tensor out;  // input's shape and dtype, any layout, not overlapping the inputs
    // Outputs when training: the batch mean and 1 / sqrt(biased var + eps), for backward.
    Tensor save_mean, save_invstd;
};
void batch_norm(const ForwardArgs &args);

struct BackwardArgs {
    Tensor grad_out, input;
    Tensor output;  // the forward's out, when its activation was relu (the ReLU's mask)
    Tensor weight;  // optional (undefined: 1)
    Tensor running_mean, running_var;  // the statistics of an eval-mode forward
    Tensor save_mean, save_invstd;     // the statistics of a training forward
    bool training = true;              // the forward's: batch statistics
    double eps = 1e-5;
    Activation activation = Activation::none;
    // Outputs; each optional (undefined: not wanted, its work skipped). grad_weight and
    // grad_bias are written, not accumulated. grad_residual: the gradient of a forward's
    // residual, grad_out through the activation.
    Tensor grad_input, grad_weight, grad_bias, grad_residual;
};
void batch_norm_backward(const BackwardArgs &args);

// ---- SyncBatchNorm's steps, between which the caller exchanges per-channel values over its
// processes (as torch.nn.SyncBatchNorm does with batch_norm_stats, ..., batch_norm_elemt) ----
// This process's statistics: `partial` [3, C] float64 rows {count, mean, M2} (zeros for an
// empty batch). input as batch_norm's.
void batch_norm_stats(const Tensor &input, const Tensor &partial);
// Every process's partial statistics, `gathered` [P, 3, C] float64 in rank order, merged into
// the group's: save_mean and save_invstd (as a training forward's), var (the biased variance,
// for batch_norm's normalization with training = false), and running_mean/var updated in place
// by `momentum` (optional). Throws when the group has at most one value per channel.
struct GatherStatsArgs {
    Tensor gathered, running_mean, running_var;
    double momentum = 0.1, eps = 1e-5;
    Tensor save_mean, save_invstd, var;
};
void batch_norm_gather_stats(const GatherStatsArgs &args);
// This process's part of a training backward: grad_weight and grad_bias (its own, as in
// PyTorch) and `sums` [2, C] float64 {sum(dy), sum(dy * (x - mean))}, to be summed over the
// processes; then grad_input from the summed sums and the group's value count per channel.
// grad_out, input, weight, save_mean, save_invstd as batch_norm_backward's (no activation).
void batch_norm_backward_reduce(const BackwardArgs &args, const Tensor &sums);
void batch_norm_backward_elemt(const BackwardArgs &args, const Tensor &sums, int64_t count);

}  // namespace bn2d::functional
