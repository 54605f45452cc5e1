// fold_into_conv (bn2d/deploy.h).
#include "bn2d/deploy.h"

#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bn2d/errors.h"
#include "internal.h"

namespace bn2d {
namespace {

[[noreturn]] void fail(const std::string &msg) { throw Error("fold_into_conv: " + msg); }

double load(const Tensor &t, int64_t offset) {
    return detail::load_element(
        static_cast<const char *>(t.data_ptr()) + offset * dtype_size(t.dtype()), t.dtype());
}

void store(const Tensor &t, int64_t offset, double v) {
    detail::store_element(static_cast<char *>(t.data_ptr()) + offset * dtype_size(t.dtype()),
                          t.dtype(), v);
}

// Calls f(offset, index along `channel_dim`) for every element of t.
template<typename F>
void for_each_element(const Tensor &t, int channel_dim, F &&f) {
    if (t.numel() == 0) return;
    std::vector<int64_t> index(t.dim(), 0);
    while (true) {
        int64_t offset = 0;
        for (int d = 0; d < t.dim(); ++d) offset += index[d] * t.stride(d);
        f(offset, index[channel_dim]);
        int d = t.dim() - 1;
        while (d >= 0 && ++index[d] == t.size(d)) index[d--] = 0;
        if (d < 0) return;
    }
}

void check_host_tensor(const char *name, const Tensor &t) {
    if (t.device() != Device::CPU)
        fail(std::string(name) + " is on " + device_name(t.device()) +
             "; folding takes host tensors");
    for (int i = 0; i < t.dim(); ++i)
        if (t.size(i) < 0) fail(std::string(name) + " has a negative size " + t.shape_string());
    try {
        detail::element_span(t);
    } catch (const Error &e) {
        fail(std::string(name) + ": " + e.what());
    }
    if (!t.defined() && t.numel() > 0) fail(std::string(name) + " is null (no data pointer)");
    if (detail::self_overlaps(t))
        fail(std::string(name) + " has elements that share memory (strides " +
             Tensor(nullptr, t.strides()).shape_string() + "); it is written in place");
}

}  // namespace

void fold_into_conv(const BatchNorm2d &bn, const Tensor &conv_weight, const Tensor &conv_bias,
                    bool transposed) {
    if (bn.is_training())
        fail("the module is in training mode; folding is for inference (call eval() first)");
    if (!bn.track_running_stats())
        fail("the module has no running statistics (track_running_stats = false): eval mode "
             "normalizes with batch statistics, which no convolution can hold");
    check_host_tensor("conv_weight", conv_weight);
    check_host_tensor("conv_bias", conv_bias);
    const int64_t C = bn.num_features();
    const int channel_dim = transposed ? 1 : 0;
    if (conv_weight.dim() < 2)
        fail("conv_weight must have at least 2 dimensions, got " + conv_weight.shape_string());
    if (conv_weight.size(channel_dim) != C)
        fail("conv_weight " + conv_weight.shape_string() + " has " +
             std::to_string(conv_weight.size(channel_dim)) + " output channels (dimension " +
             std::to_string(channel_dim) + (transposed ? ", transposed; groups must be 1" : "") +
             "), the module has " + std::to_string(C));
    if (conv_bias.dim() != 1 || conv_bias.size(0) != C)
        fail("conv_bias must be [" + std::to_string(C) + "], got " + conv_bias.shape_string());
    if (conv_bias.dtype() != conv_weight.dtype())
        fail(std::string("conv_bias is ") + dtype_name(conv_bias.dtype()) + " but conv_weight is " +
             dtype_name(conv_weight.dtype()));
    if (detail::overlaps(conv_weight, conv_bias))
        fail("conv_weight and conv_bias overlap in memory");
    // Both are written; the module is read (and const): they must not be its storage.
    const std::pair<const char *, Tensor> module_storage[] = {{"weight()", bn.weight()},
                                                              {"bias()", bn.bias()},
                                                              {"running_mean()", bn.running_mean()},
                                                              {"running_var()", bn.running_var()},
                                                              {"weight_grad()", bn.weight_grad()},
                                                              {"bias_grad()", bn.bias_grad()}};
    for (const auto &[name, view] : module_storage)
        for (const auto &[conv_name, conv] :
             {std::pair{"conv_weight", &conv_weight}, std::pair{"conv_bias", &conv_bias}})
            if (view.defined() && detail::overlaps(*conv, view))
                fail(std::string(conv_name) + " overlaps the module's " + name +
                     " in memory; folding writes the convolution, which must not alias the module");

    const StateDict state = bn.state_dict();  // host copies, also of a module on a GPU
    std::vector<double> scale(C), bias(C);
    for (int64_t c = 0; c < C; ++c) {
        const double w = bn.affine() ? state.weight[c] : 1.0;
        const double b = bn.affine() ? state.bias[c] : 0.0;
        scale[c] = w / std::sqrt(state.running_var[c] + bn.eps());
        bias[c] = (load(conv_bias, c * conv_bias.stride(0)) - state.running_mean[c]) * scale[c] + b;
    }
    for_each_element(conv_weight, channel_dim, [&](int64_t offset, int64_t c) {
        store(conv_weight, offset, load(conv_weight, offset) * scale[c]);
    });
    for (int64_t c = 0; c < C; ++c) store(conv_bias, c * conv_bias.stride(0), bias[c]);
}

}  // namespace bn2d
