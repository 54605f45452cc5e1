// Deployment transforms of a trained module.
#pragma once

#include "bn2d/batchnorm2d.h"
#include "bn2d/tensor.h"

namespace bn2d {

// Folds an eval-mode batch norm into the convolution before it, as PyTorch's
// torch.nn.utils.fuse_conv_bn_eval does, so inference runs the convolution alone:
//   conv(x, W', b') == bn(conv(x, W, b)),
//   s = weight / sqrt(running_var + eps),  W'[o, ...] = W[o, ...] * s[o],
//   b' = (b - running_mean) * s + bias        (weight 1, bias 0 when not affine).
// conv_weight: the convolution's weight, [C_out, C_in / groups, kH, kW] (any rank >= 2: Conv1d
//   and Conv3d weights too), updated in place. transposed: a ConvTranspose weight,
//   [C_in, C_out, kH, kW] (output channels in dimension 1; groups must be 1, as in PyTorch).
// conv_bias: [C_out], read as the convolution's bias and overwritten with the folded one; pass
//   zeros for a convolution without bias (PyTorch then creates the bias).
// Host tensors of one dtype (float32, float64, bfloat16 or float16), any strides; the arithmetic
// is float64, each result rounded once. C_out must be the module's num_features, the module in
// eval mode with running statistics (PyTorch asserts both). Throws bn2d::Error, with both tensors
// untouched, on anything else, and on a weight or bias whose elements overlap each other.
void fold_into_conv(const BatchNorm2d &bn, const Tensor &conv_weight, const Tensor &conv_bias,
                    bool transposed = false);

}  // namespace bn2d
