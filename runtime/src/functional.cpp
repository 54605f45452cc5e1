// bn2d::functional: batch norm on caller-owned tensors (bn2d/functional.h). Validation, then
// the same kernel sequences as BatchNorm2d (detail::train_forward, detail::backward), with
// per-channel scratch standing in for what the caller leaves out.
#include "bn2d/functional.h"

#include <cmath>
#include <cstring>

#include "argument_checks.h"
#include "internal.h"

namespace bn2d::functional {
namespace {

using Buf = detail::HalideBuffer;

// Per-channel values of one call: `dtype` (float32, or float64 for float64 inputs), C of them.
struct Channels {
    const detail::ArgumentChecks &check;
    int64_t C;
    DType dtype;

    // The caller's [C] vector, validated; `name` for the message.
    Buf view(const char *name, const Tensor &t) const {
        if (t.device() != Device::CPU)
            check.fail(std::string(name) + " is on " + device_name(t.device()) +
                       ": bn2d::functional runs on the CPU");
        if (t.dim() != 1)
            check.fail(std::string(name) + " must be a vector of C = " + std::to_string(C) +
                       " values, got shape " + t.shape_string());
        if (t.size(0) != C)
            check.fail(std::string(name) + " has " + std::to_string(t.size(0)) +
                       " values (num_features) but the input has C = " + std::to_string(C) +
                       " channels");
        if (t.dtype() != dtype)
            check.fail(std::string(name) + " is " + dtype_name(t.dtype()) + ", expected " +
                       dtype_name(dtype) + " (per-channel values are float32, float64 for " +
                       "float64 inputs)");
        if (C > 1 && t.stride(0) != 1)
            check.fail(std::string(name) + " must be contiguous, got stride " +
                       std::to_string(t.stride(0)));
        if (C > 0 && !t.data_ptr()) check.fail(std::string(name) + " is null (no data pointer)");
        return Buf(detail::element_type(dtype), t.data_ptr(), static_cast<int>(C));
    }
    // Scratch filled with `value` (a left-out weight is 1, a left-out bias 0, ...).
    Buf filled(double value) const {
        Buf b(detail::element_type(dtype), static_cast<int>(C));
        for (int64_t i = 0; i < C; ++i)
            detail::store_element(static_cast<char *>(b.data()) + i * dtype_size(dtype), dtype,
                                  value);
        return b;
    }
    Buf view_or(const char *name, const Tensor &t, double value) const {
        return t.defined() ? view(name, t) : filled(value);
    }
    void copy(const Tensor &dst, const Buf &src) const {
        if (C > 0) std::memcpy(dst.data_ptr(), src.data(), C * dtype_size(dtype));
    }
};

void check_cpu(const detail::ArgumentChecks &check, const char *name, const Tensor &t) {
    if (t.defined() && t.device() != Device::CPU)
        check.fail(std::string(name) + " is on " + device_name(t.device()) +
                   ": bn2d::functional runs on the CPU");
}

void check_activation(const detail::ArgumentChecks &check, Activation a) {
    if (a != Activation::none && a != Activation::relu)
        check.fail("unknown activation " + std::to_string(static_cast<int>(a)));
}

void check_eps(const detail::ArgumentChecks &check, double eps) {
    if (!std::isfinite(eps) || eps < 0)
        check.fail("eps must be finite and >= 0, got " + std::to_string(eps));
}

// Whether a call updates running statistics (both given, or neither), and a finite momentum.
bool check_running_update(const detail::ArgumentChecks &check, double momentum,
                          const Tensor &running_mean, const Tensor &running_var) {
    if (!std::isfinite(momentum))
        check.fail("momentum must be finite, got " + std::to_string(momentum));
    const bool running = running_mean.defined() || running_var.defined();
    if (running && !(running_mean.defined() && running_var.defined()))
        check.fail("running_mean and running_var go together: got only one of them");
    return running;
}

// The channel count of a 4-D input (0 when it is not 4-D: check.tensor then says so).
int64_t channels_of(const Tensor &t) { return t.dim() == 4 ? t.size(1) : 0; }

bool large(std::initializer_list<const Buf *> bufs) {
    for (const Buf *b : bufs)
        if (b->dimensions() > 0 && detail::needs_large_buffers(*b)) return true;
    return false;
}

}  // namespace

void batch_norm(const ForwardArgs &a) {
    detail::init_runtime();
    const detail::ArgumentChecks check{"batch_norm"};
    for (auto [name, t] :
         {std::pair{"input", &a.input}, {"out", &a.out}, {"residual", &a.residual}})
        check_cpu(check, name, *t);
    const int64_t C = channels_of(a.input);
    check.tensor("input", a.input, C, Device::CPU, {});
    check.tensor("out", a.out, C, Device::CPU, a.input.sizes());
    check.same_dtype("out", a.out, "input", a.input);
    check.no_self_overlap("out", a.out);
    check.no_alias("out", a.out, "input", a.input);
    const bool residual = a.residual.defined() || a.residual.dim() > 0;
    if (residual) {
        check.tensor("residual", a.residual, C, Device::CPU, a.input.sizes());
        check.same_dtype("residual", a.residual, "input", a.input);
        check.no_alias("out", a.out, "residual", a.residual);
    }
    check_eps(check, a.eps);
    check_activation(check, a.activation);
    const bool running = check_running_update(check, a.momentum, a.running_mean, a.running_var);
    if (!a.training && !running)
        check.fail("running_mean and running_var are required when training is false");

    const Channels ch{check, C, detail::per_channel_dtype(a.input.dtype())};
    Buf weight = ch.view_or("weight", a.weight, 1.0);
    Buf bias = ch.view_or("bias", a.bias, 0.0);
    Buf running_mean = ch.view_or("running_mean", a.running_mean, 0.0);
    Buf running_var = ch.view_or("running_var", a.running_var, 1.0);
    Buf save_mean =
        a.training && a.save_mean.defined() ? ch.view("save_mean", a.save_mean) : ch.filled(0.0);
    Buf save_invstd = a.training && a.save_invstd.defined() ? ch.view("save_invstd", a.save_invstd)
                                                            : ch.filled(0.0);
    // The output must not overwrite a per-channel input; the statistics it writes must not
    // overwrite the tensors.
    for (auto [name, t] : {std::pair{"weight", &a.weight},
                           {"bias", &a.bias},
                           {"running_mean", &a.running_mean},
                           {"running_var", &a.running_var}})
        if (t->defined()) check.no_alias("out", a.out, name, *t);
    for (auto [name, t] : {std::pair{"save_mean", &a.save_mean}, {"save_invstd", &a.save_invstd}})
        if (a.training && t->defined()) {
            check.no_alias(name, *t, "input", a.input);
            check.no_alias(name, *t, "out", a.out);
        }

    int64_t per_channel = 0;
    if (__builtin_mul_overflow(a.input.size(0), a.input.size(2), &per_channel) ||
        __builtin_mul_overflow(per_channel, a.input.size(3), &per_channel))
        check.fail("input " + a.input.shape_string() + ": N*H*W overflows int64");
    if (a.training && per_channel == 1)
        check.fail("expected more than 1 value per channel when training, got input size " +
                   a.input.shape_string());
    if (a.input.numel() == 0) return;  // PyTorch: an empty output, statistics untouched

    std::vector<const Tensor *> tensors{&a.input, &a.out};
    if (residual) tensors.push_back(&a.residual);
    const detail::Placement place = detail::place(tensors);
    Buf hx = detail::tensor_buffer(a.input, place.layout, place.fuse);
    Buf hy = detail::tensor_buffer(a.out, place.layout, place.fuse);
    Buf hz = residual ? detail::tensor_buffer(a.residual, place.layout, place.fuse) : Buf();
    const detail::Call call{Device::CPU, place.layout, a.input, large({&hx, &hy, &hz})};
    const detail::ForwardBuffers f{
        hx,
        weight,
        bias,
        running_mean,
        running_var,
        hy,
        {residual ? hz.raw_buffer() : nullptr, a.activation == Activation::relu},
        a.eps};
    if (!a.training) {
        detail::run_eval_forward(call, f);
        return;
    }
    Buf running_mean_next = ch.filled(0.0), running_var_next = ch.filled(0.0);
    Buf partial, merged_var;
    detail::train_forward(
        call, f,
        {save_mean, save_invstd, running_mean_next, running_var_next, running ? a.momentum : 0.0},
        partial, merged_var);
    if (running) {
        ch.copy(a.running_mean, running_mean_next);
        ch.copy(a.running_var, running_var_next);
    }
}

namespace {

// A backward's validated arguments and buffers (batch_norm_backward and SyncBatchNorm's steps).
struct BackwardCall {
    Channels ch;
    bool relu, want_input, want_residual, want_params;
    int64_t per_channel;  // N*H*W
    Buf weight, mean, stat, grad_weight, grad_bias;
    Buf hx, hdy, hdx, hout, hdz;
    detail::Call call;
};

BackwardCall prepare_backward(const BackwardArgs &a, const detail::ArgumentChecks &check) {
    for (auto [name, t] : {std::pair{"grad_out", &a.grad_out},
                           {"input", &a.input},
                           {"output", &a.output},
                           {"grad_input", &a.grad_input},
                           {"grad_residual", &a.grad_residual}})
        check_cpu(check, name, *t);
    const int64_t C = channels_of(a.input);
    const std::vector<int64_t> &shape = a.input.sizes();
    check.tensor("input", a.input, C, Device::CPU, {});
    check.tensor("grad_out", a.grad_out, C, Device::CPU, shape);
    check.same_dtype("grad_out", a.grad_out, "input", a.input);
    check_eps(check, a.eps);
    check_activation(check, a.activation);
    const bool relu = a.activation == Activation::relu;
    if (relu) {
        check.tensor("output", a.output, C, Device::CPU, shape);
        check.same_dtype("output", a.output, "input", a.input);
    }
    // Outputs: each must not alias any tensor the call reads, nor another output.
    std::vector<std::pair<const char *, const Tensor *>> read{{"grad_out", &a.grad_out},
                                                              {"input", &a.input}};
    if (relu) read.push_back({"output", &a.output});
    std::vector<std::pair<const char *, const Tensor *>> written;
    for (auto [name, t] :
         {std::pair{"grad_input", &a.grad_input}, {"grad_residual", &a.grad_residual}}) {
        if (!t->defined() && t->dim() == 0) continue;
        check.tensor(name, *t, C, Device::CPU, shape);
        check.same_dtype(name, *t, "input", a.input);
        check.no_self_overlap(name, *t);
        for (auto [in_name, in] : read) check.no_alias(name, *t, in_name, *in);
        for (auto [out_name, out] : written) check.no_alias(name, *t, out_name, *out);
        written.push_back({name, t});
    }
    const Channels ch{check, C, detail::per_channel_dtype(a.input.dtype())};
    Buf weight = ch.view_or("weight", a.weight, 1.0);
    Buf mean, stat;
    if (a.training) {
        if (!a.save_mean.defined() || !a.save_invstd.defined())
            check.fail("save_mean and save_invstd (the training forward's) are required when "
                       "training is true");
        mean = ch.view("save_mean", a.save_mean);
        stat = ch.view("save_invstd", a.save_invstd);
    } else {
        if (!a.running_mean.defined() || !a.running_var.defined())
            check.fail("running_mean and running_var are required when training is false");
        mean = ch.view("running_mean", a.running_mean);
        stat = ch.view("running_var", a.running_var);
    }
    Buf grad_weight = ch.view_or("grad_weight", a.grad_weight, 0.0);
    Buf grad_bias = ch.view_or("grad_bias", a.grad_bias, 0.0);
    for (auto [name, t] : {std::pair{"grad_weight", &a.grad_weight}, {"grad_bias", &a.grad_bias}})
        if (t->defined())
            for (auto [in_name, in] : read) check.no_alias(name, *t, in_name, *in);

    const bool want_input = a.grad_input.defined() || a.grad_input.dim() > 0;
    const bool want_residual = a.grad_residual.defined() || a.grad_residual.dim() > 0;
    std::vector<const Tensor *> tensors{&a.input, &a.grad_out};
    if (want_input) tensors.push_back(&a.grad_input);
    if (relu) tensors.push_back(&a.output);
    if (want_residual) tensors.push_back(&a.grad_residual);
    const bool empty = a.grad_out.numel() == 0;
    const detail::Placement place =
        empty ? detail::Placement{detail::Layout::nchw, false} : detail::place(tensors);
    auto buffer = [&](bool wanted, const Tensor &t) {
        return wanted && !empty ? detail::tensor_buffer(t, place.layout, place.fuse) : Buf();
    };
    Buf hx = buffer(true, a.input), hdy = buffer(true, a.grad_out);
    Buf hdx = buffer(want_input, a.grad_input), hout = buffer(relu, a.output);
    Buf hdz = buffer(want_residual, a.grad_residual);
    const bool is_large = large({&hx, &hdy, &hdx, &hout, &hdz});
    return {ch,
            relu,
            want_input,
            want_residual,
            a.grad_weight.defined() || a.grad_bias.defined(),
            C > 0 ? a.grad_out.numel() / C : 0,
            std::move(weight),
            std::move(mean),
            std::move(stat),
            std::move(grad_weight),
            std::move(grad_bias),
            std::move(hx),
            std::move(hdy),
            std::move(hdx),
            std::move(hout),
            std::move(hdz),
            {Device::CPU, place.layout, a.input, is_large}};
}

// A [rows, C] (or [P, rows, C]) float64 tensor of per-channel values, as a Halide buffer with
// dims (C, rows[, P]).
Buf float64_rows(const detail::ArgumentChecks &check, const char *name, const Tensor &t,
                 const std::vector<int64_t> &shape) {
    if (t.device() != Device::CPU)
        check.fail(std::string(name) + " is on " + device_name(t.device()) +
                   ": bn2d::functional runs on the CPU");
    if (t.dtype() != DType::float64)
        check.fail(std::string(name) + " must be float64, got " + dtype_name(t.dtype()));
    if (t.sizes() != shape)
        check.fail(std::string(name) + " has shape " + t.shape_string() + ", expected " +
                   Tensor(nullptr, shape).shape_string());
    int64_t stride = 1;
    for (int i = t.dim() - 1; i >= 0; --i) {
        if (t.size(i) > 1 && t.stride(i) != stride)
            check.fail(std::string(name) + " must be contiguous");
        stride *= t.size(i);
    }
    if (stride > 0 && !t.data_ptr()) check.fail(std::string(name) + " is null (no data pointer)");
    std::vector<int> extents(shape.rbegin(), shape.rend());
    std::vector<halide_dimension_t> dims;
    int32_t s = 1;
    for (int e : extents) {
        dims.push_back({0, e, s, 0});
        s *= e;
    }
    return Buf(halide_type_t(halide_type_float, 64), t.data_ptr(), static_cast<int>(dims.size()),
               dims.data());
}

}  // namespace

void batch_norm_backward(const BackwardArgs &a) {
    detail::init_runtime();
    const detail::ArgumentChecks check{"batch_norm_backward"};
    BackwardCall b = prepare_backward(a, check);
    if (a.grad_out.numel() == 0) {  // nothing to compute: parameter gradients are 0
        for (Buf *z : {&b.grad_weight, &b.grad_bias})
            if (z->data()) std::memset(z->data(), 0, z->size_in_bytes());
        return;
    }
    // The residual's gradient first: grad_out through the ReLU, then the batch norm's incoming
    // gradient, with no mask left to apply.
    halide_buffer_t *incoming = b.hdy, *relu_out = b.relu ? b.hout.raw_buffer() : nullptr;
    if (b.want_residual) {
        Buf ones = b.ch.filled(1.0);
        detail::run_grad_residual(b.call, b.hdy, relu_out, ones, b.hdz);
        incoming = b.hdz;
        relu_out = nullptr;
    }
    if (!b.want_input && !b.want_params) return;
    Buf zeros = b.ch.filled(0.0);
    Buf grad_sums(halide_type_t(halide_type_float, 64), static_cast<int>(b.ch.C), 2);
    detail::backward(b.call, a.training, b.want_params, a.eps,
                     {b.hx, incoming, relu_out, b.mean, b.stat, b.weight,
                      b.want_input ? b.hdx.raw_buffer() : nullptr, zeros, zeros, b.grad_weight,
                      b.grad_bias, grad_sums},
                     b.per_channel);
}

void batch_norm_stats(const Tensor &input, const Tensor &partial) {
    detail::init_runtime();
    const detail::ArgumentChecks check{"batch_norm_stats"};
    check_cpu(check, "input", input);
    const int64_t C = channels_of(input);
    check.tensor("input", input, C, Device::CPU, {});
    Buf p = float64_rows(check, "partial", partial, {3, C});
    if (input.numel() == 0) {  // an empty batch: a count of 0, which the merge skips
        if (C > 0) std::memset(p.data(), 0, p.size_in_bytes());
        return;
    }
    const detail::Placement place = detail::place({&input});
    Buf hx = detail::tensor_buffer(input, place.layout, place.fuse);
    detail::run_sync_stats({Device::CPU, place.layout, input, large({&hx})}, hx, p);
}

void batch_norm_gather_stats(const GatherStatsArgs &a) {
    detail::init_runtime();
    const detail::ArgumentChecks check{"batch_norm_gather_stats"};
    if (a.gathered.dim() != 3)
        check.fail("gathered must be [processes, 3, C], got " + a.gathered.shape_string());
    const int64_t P = a.gathered.size(0), C = a.gathered.size(2);
    Buf gathered = float64_rows(check, "gathered", a.gathered, {P, 3, C});
    check_eps(check, a.eps);
    const bool running = check_running_update(check, a.momentum, a.running_mean, a.running_var);
    // The per-channel dtype is the outputs': float32, or float64 for float64 inputs.
    const Channels ch{check, C, a.save_mean.dtype()};
    if (ch.dtype != DType::float32 && ch.dtype != DType::float64)
        check.fail(std::string("save_mean must be float32 or float64, got ") +
                   dtype_name(ch.dtype));
    Buf save_mean = ch.view("save_mean", a.save_mean);
    Buf save_invstd = ch.view("save_invstd", a.save_invstd);
    Buf var = ch.view("var", a.var);
    Buf running_mean = ch.view_or("running_mean", a.running_mean, 0.0);
    Buf running_var = ch.view_or("running_var", a.running_var, 1.0);
    // The group's count per channel must exceed 1 (PyTorch's check, over every process).
    double total = 0;
    for (int64_t p = 0; p < P && C > 0; ++p)
        total += static_cast<const double *>(gathered.data())[p * 3 * C];
    if (C > 0 && total <= 1)
        check.fail("expected more than 1 value per channel when training, got " +
                   std::to_string(static_cast<int64_t>(total)) + " over " + std::to_string(P) +
                   " processes");
    if (C == 0) return;
    Buf running_mean_next = ch.filled(0.0), running_var_next = ch.filled(0.0);
    const Tensor per_channel_type(nullptr, ch.dtype, {1, C, 1, 1});
    detail::run_sync_merge(
        {Device::CPU, detail::Layout::nchw, per_channel_type}, "sync_fwd", gathered, running_mean,
        running_var, a.eps,
        {save_mean, save_invstd, running_mean_next, running_var_next, running ? a.momentum : 0.0},
        var);
    if (running) {
        ch.copy(a.running_mean, running_mean_next);
        ch.copy(a.running_var, running_var_next);
    }
}

void batch_norm_backward_reduce(const BackwardArgs &a, const Tensor &sums) {
    detail::init_runtime();
    const detail::ArgumentChecks check{"batch_norm_backward_reduce"};
    if (!a.training || a.activation != Activation::none)
        check.fail("SyncBatchNorm's backward steps take a training forward with no activation");
    BackwardCall b = prepare_backward(a, check);
    Buf g = float64_rows(check, "sums", sums, {2, b.ch.C});
    if (a.grad_out.numel() == 0) {  // this process adds nothing to the sums or the gradients
        for (Buf *z : {&g, &b.grad_weight, &b.grad_bias})
            if (z->data()) std::memset(z->data(), 0, z->size_in_bytes());
        return;
    }
    Buf zeros = b.ch.filled(0.0);
    detail::run_backward(b.call, true, true, a.eps,
                         {b.hx, b.hdy, nullptr, b.mean, b.stat, b.weight, nullptr, zeros, zeros,
                          b.grad_weight, b.grad_bias, g});
}

void batch_norm_backward_elemt(const BackwardArgs &a, const Tensor &sums, int64_t count) {
    detail::init_runtime();
    const detail::ArgumentChecks check{"batch_norm_backward_elemt"};
    if (!a.training || a.activation != Activation::none)
        check.fail("SyncBatchNorm's backward steps take a training forward with no activation");
    BackwardCall b = prepare_backward(a, check);
    if (!b.want_input) check.fail("grad_input is required");
    Buf g = float64_rows(check, "sums", sums, {2, b.ch.C});
    if (count < 1) check.fail("count must be >= 1, got " + std::to_string(count));
    if (a.grad_out.numel() == 0) return;
    detail::run_sync_grad_input(b.call, "sync_bwd",
                                {b.hx, b.hdy, nullptr, b.mean, b.stat, b.weight, b.hdx, nullptr,
                                 nullptr, nullptr, nullptr, nullptr},
                                g, static_cast<double>(count));
}

}  // namespace bn2d::functional
