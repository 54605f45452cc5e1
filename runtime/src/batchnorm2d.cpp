// BatchNorm2d: module state, PyTorch's mode logic, validation, all-or-nothing commits.
#include "bn2d/batchnorm2d.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "bn2d/device.h"
#include "internal.h"

namespace bn2d {

using Buf = detail::HalideBuffer;

namespace {

[[noreturn]] void fail(const std::string &msg) { throw Error("BatchNorm2d: " + msg); }

void check_eps(double eps) {
    if (!std::isfinite(eps) || eps < 0)
        fail("eps must be finite and >= 0, got " + std::to_string(eps));
}

void check_momentum(const std::optional<double> &m) {
    if (m && !(*m >= 0.0 && *m <= 1.0))  // also rejects NaN
        fail("momentum must be in [0, 1] or None, got " + std::to_string(*m));
}

std::string fmt(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
}

// Rounds a value to a parameter dtype (16-bit parameters live in float32 storage).
double round_to(DType t, double v) {
    switch (t) {
    case DType::float32: return static_cast<float>(v);
    case DType::bfloat16: return float_from_bfloat16(bfloat16_from_float(static_cast<float>(v)));
    case DType::float16: return float_from_float16(float16_from_float(static_cast<float>(v)));
    case DType::float64: return v;
    }
    return v;
}

// The output of the allocating forward(x) and backward(grad_out).
std::vector<float> host_output(int64_t numel, const char *call) {
    try {
        return std::vector<float>(static_cast<size_t>(numel));
    } catch (const std::exception &) {  // bad_alloc, length_error
        fail(std::string(call) + ": cannot allocate " + std::to_string(numel) +
             " floats for the output");
    }
}

// A view of C per-channel values of the module's storage, as weight() etc. return it.
Tensor storage_view(Buf &b, int64_t C, Device d, DType t) {
    if (d == Device::CPU) return Tensor(b.data(), t, {C});
    if (C == 0) return Tensor::on_device(0, {0}, d, t);  // no device allocation
    return Tensor::on_device(detail::app_device_handle(b, d), {C}, d, t);
}

// Module storage an application can see (weight(), ..., bias_grad()), named for errors.
struct StateView {
    const char *name;
    Tensor view;
};

}  // namespace

struct BatchNorm2d::State {
    int64_t C;
    DType dtype;          // of the parameters (Options::dtype)
    DType storage_dtype;  // of the storage: float64 for float64, else float32
    double eps;
    std::optional<double> momentum;
    bool affine, track;
    Activation activation = Activation::none;
    bool training = true;
    Device device = Device::CPU;
    int64_t num_batches_tracked = 0;

    // Module storage, C floats each. Running stats exist (as kernel inputs) even when not
    // tracked, but are then not exposed.
    Buf weight, bias, running_mean, running_var, grad_weight, grad_bias;
    // Kernel outputs land here first and are committed only if the kernel succeeded.
    Buf running_mean_next, running_var_next, grad_weight_next, grad_bias_next;
    // Batch statistics of the last training forward (for backward), and the next ones.
    Buf saved_mean, saved_invstd, saved_mean_next, saved_invstd_next;
    // C values of 1: the unit scale of the residual's gradient kernel (run_grad_residual).
    Buf ones;

    // The last successful forward, for backward.
    bool has_forward = false;
    bool forward_training = false;     // module mode at that forward
    bool forward_batch_stats = false;  // batch statistics were used
    bool forward_residual = false;     // forward_add
    Activation forward_activation = Activation::none;
    Tensor forward_x;
    Tensor forward_out;  // read by backward for the ReLU's mask (relu only)

    std::vector<Buf *> all_buffers() {
        return {&weight,         &bias,           &running_mean,      &running_var,
                &grad_weight,    &grad_bias,      &running_mean_next, &running_var_next,
                &grad_weight_next, &grad_bias_next, &saved_mean,        &saved_invstd,
                &saved_mean_next,  &saved_invstd_next, &ones};
    }

    // The storage behind weight(), bias(), running_mean(), running_var(), weight_grad() and
    // bias_grad(), for the in-place checks.
    std::vector<StateView> visible_storage() {
        auto v = [&](Buf &b) { return storage_view(b, C, device, storage_dtype); };
        return {{"weight()", v(weight)},           {"bias()", v(bias)},
                {"running_mean()", v(running_mean)}, {"running_var()", v(running_var)},
                {"weight_grad()", v(grad_weight)},  {"bias_grad()", v(grad_bias)}};
    }

    // ---- storage helpers (host or device) ----
    const halide_device_interface_t *iface() const { return detail::device_interface(device); }

    Buf allocate() const {
        return Buf(detail::element_type(storage_dtype), static_cast<int>(C));
    }

    std::vector<double> read(Buf &b) {
        detail::sync_to_host(b, device, "copying module state to the host");
        std::vector<double> v(static_cast<size_t>(C));
        for (int64_t i = 0; i < C; ++i)
            v[i] = storage_dtype == DType::float64 ? static_cast<const double *>(b.data())[i]
                                                   : static_cast<const float *>(b.data())[i];
        return v;
    }

    // Writes values rounded to the parameter dtype.
    void write(Buf &b, const std::vector<double> &v, DType round = DType::float64) {
        for (int64_t i = 0; i < C; ++i) {
            const double r = round_to(round, round_to(storage_dtype, v[i]));
            if (storage_dtype == DType::float64) static_cast<double *>(b.data())[i] = r;
            else static_cast<float *>(b.data())[i] = static_cast<float>(r);
        }
        detail::sync_to_device(b, device, "copying module state to the device");
    }
    void write_param(Buf &b, const std::vector<double> &v) { write(b, v, dtype); }

    void fill(Buf &b, double value) { write(b, std::vector<double>(C, value)); }

    // dst = src, where both live (host or device). Only called after a kernel succeeded.
    // A 16-bit parameter is rounded to its type, as PyTorch would store it.
    void commit(Buf &dst, Buf &src) {
        if (dtype == DType::bfloat16 || dtype == DType::float16) {
            write_param(dst, read(src));
            return;
        }
        if (device == Device::CPU) {
            std::memcpy(dst.data(), src.data(), dtype_size(storage_dtype) * C);
            return;
        }
        src.set_device_dirty();
        detail::check_halide(halide_buffer_copy(nullptr, src.raw_buffer(), iface(), dst.raw_buffer()),
                             "committing module state on the device");
        dst.set_host_dirty(false);
        dst.set_device_dirty();
    }
};

BatchNorm2d::BatchNorm2d(int64_t num_features, const Options &o) : s_(std::make_unique<State>()) {
    detail::init_runtime();
    // 0 is a module with no channels, as in PyTorch: it accepts [N, 0, H, W] and does nothing.
    if (num_features < 0) fail("num_features must be >= 0, got " + std::to_string(num_features));
    if (num_features > INT32_MAX) fail("num_features too large");
    check_eps(o.eps);
    check_momentum(o.momentum);
    s_->C = num_features;
    s_->dtype = o.dtype;
    s_->storage_dtype = detail::per_channel_dtype(o.dtype);
    s_->eps = o.eps;
    s_->momentum = o.momentum;
    s_->affine = o.affine;
    s_->track = o.track_running_stats;
    if (o.activation != Activation::none && o.activation != Activation::relu)
        fail("unknown activation " + std::to_string(static_cast<int>(o.activation)));
    s_->activation = o.activation;
    for (Buf *b : s_->all_buffers()) *b = s_->allocate();
    s_->fill(s_->ones, 1.0);
    s_->fill(s_->grad_weight, 0.0);
    s_->fill(s_->grad_bias, 0.0);
    reset_parameters();
}

BatchNorm2d::BatchNorm2d(int64_t num_features, double eps, std::optional<double> momentum,
                         bool affine, bool track_running_stats)
    : BatchNorm2d(num_features, Options{eps, momentum, affine, track_running_stats}) {}

BatchNorm2d::~BatchNorm2d() = default;
BatchNorm2d::BatchNorm2d(BatchNorm2d &&) noexcept = default;
BatchNorm2d &BatchNorm2d::operator=(BatchNorm2d &&) noexcept = default;

BatchNorm2d &BatchNorm2d::train(bool on) {
    s_->training = on;
    return *this;
}
bool BatchNorm2d::is_training() const { return s_->training; }

namespace {

// Validates a 4-D tensor argument against the module; `expect` is the shape it must have
// (empty: any N, H, W with C = num_features).
void check_tensor(const char *name, const Tensor &t, int64_t C, Device device,
                  const std::vector<int64_t> &expect) {
    // Null data is fine only for an empty tensor (PyTorch accepts empty batches).
    if (!t.defined() && (t.dim() != 4 || t.numel() > 0))
        fail(std::string(name) + " is null (no data pointer)");
    if (t.dim() != 4)
        fail(std::string(name) + " must be 4-D (N, C, H, W), got " + std::to_string(t.dim()) +
             "-D " + t.shape_string());
    for (int i = 0; i < 4; ++i)
        if (t.size(i) < 0) fail(std::string(name) + " has a negative size " + t.shape_string());
    try {
        detail::element_span(t);  // the element count and every reach fit int64
    } catch (const Error &e) {
        fail(std::string(name) + ": " + e.what());
    }

    if (!expect.empty() && t.sizes() != expect) {
        Tensor e(nullptr, expect);
        fail(std::string(name) + " has shape " + t.shape_string() + ", expected " +
             e.shape_string());
    }
    if (t.size(1) != C)
        fail(std::string(name) + ": expected " + std::to_string(C) +
             " channels (num_features), got C = " + std::to_string(t.size(1)) + " in " +
             t.shape_string());
    if (t.device() != device)
        fail(std::string(name) + " is on " + device_name(t.device()) + " but the module is on " +
             device_name(device) + " (use to())");
    if (t.device() == Device::OpenCL)
        for (int i = 0; i < 4; ++i)
            if (t.size(i) > 1 && t.stride(i) < 0)
                fail(std::string(name) + ": negative strides are not supported on opencl");
}

// PyTorch's rule: an input of the parameters' dtype, or bfloat16/float16 with float32
// parameters (mixed precision).
void check_input_dtype(const char *name, const Tensor &t, DType params) {
    const DType d = t.dtype();
    const bool mixed = params == DType::float32 && (d == DType::bfloat16 || d == DType::float16);
    if (d != params && !mixed)
        fail(std::string(name) + " is " + dtype_name(d) + " but the module's parameters are " +
             dtype_name(params) + " (inputs must have the parameters' dtype, or be bfloat16 or " +
             "float16 with float32 parameters)");
}

void check_same_dtype(const char *name, const Tensor &t, const char *ref_name, const Tensor &ref) {
    if (t.dtype() != ref.dtype())
        fail(std::string(name) + " is " + dtype_name(t.dtype()) + " but " + ref_name + " is " +
             dtype_name(ref.dtype()));
}

// An output must not write two of its elements to one address: PyTorch's "unsupported
// operation: more than one element of the written-to tensor refers to a single memory location".
void check_no_self_overlap(const char *name, const Tensor &t) {
    if (detail::self_overlaps(t))
        fail(std::string(name) + " has overlapping elements (strides " +
             Tensor(nullptr, t.strides()).shape_string() + " for shape " + t.shape_string() +
             "); an output must not overlap itself");
}

// Outputs must not alias inputs: a channel group's statistics are read from x after other
// groups may have written their outputs.
void check_no_alias(const char *out_name, const Tensor &out, const char *in_name,
                    const Tensor &in) {
    if (detail::overlaps(out, in))
        fail(std::string(out_name) + " overlaps " + in_name +
             " in memory; in-place operation is not supported");
}

// A call's tensor over the module's own storage: an output there would corrupt the state, and
// an input there that the call updates would change under the saved forward input.
// `which`: the views of visible_storage() to check, by name (empty: all).
void check_not_state(const char *name, const Tensor &t, const std::vector<StateView> &state,
                     std::initializer_list<const char *> which = {}) {
    for (const StateView &sv : state) {
        bool checked = which.size() == 0;
        for (const char *w : which) checked = checked || std::strcmp(w, sv.name) == 0;
        if (checked && detail::overlaps(t, sv.view))
            fail(std::string(name) + " overlaps the module's " + sv.name +
                 " in memory; a call's tensors must not alias state it writes");
    }
}

// The layout of a call's tensors and whether all of them fuse their dense dimensions.
struct Placement {
    detail::Layout layout;
    bool fuse;
};
Placement place(const std::vector<const Tensor *> &tensors) {
    Placement p{detail::common_layout(tensors), true};
    for (const Tensor *t : tensors) p.fuse = p.fuse && detail::fusable(*t, p.layout);
    return p;
}

}  // namespace

void BatchNorm2d::forward(const Tensor &x, const Tensor &out) { forward_impl(x, nullptr, out); }

void BatchNorm2d::forward_add(const Tensor &x, const Tensor &residual, const Tensor &out) {
    forward_impl(x, &residual, out);
}

void BatchNorm2d::forward_impl(const Tensor &x, const Tensor *residual, const Tensor &out) {
    State &s = *s_;
    check_tensor("input", x, s.C, s.device, {});
    check_tensor("out", out, s.C, s.device, x.sizes());
    check_input_dtype("input", x, s.dtype);
    check_same_dtype("out", out, "input", x);
    check_no_self_overlap("out", out);
    check_no_alias("out", out, "input", x);
    if (residual) {
        check_tensor("residual", *residual, s.C, s.device, x.sizes());
        check_same_dtype("residual", *residual, "input", x);
        check_no_alias("out", out, "residual", *residual);
    }

    // PyTorch: batch statistics in training mode, or whenever running stats are not tracked.
    const bool batch_stats = s.training || !s.track;
    const bool update_running = s.training && s.track;
    const std::vector<StateView> state = s.visible_storage();
    check_not_state("out", out, state);
    if (update_running) {
        check_not_state("input", x, state, {"running_mean()", "running_var()"});
        if (residual)
            check_not_state("residual", *residual, state, {"running_mean()", "running_var()"});
    }
    int64_t per_channel = 0;  // N*H*W; may overflow when C = 0 makes the tensor empty
    if (__builtin_mul_overflow(x.size(0), x.size(2), &per_channel) ||
        __builtin_mul_overflow(per_channel, x.size(3), &per_channel))
        fail("input " + x.shape_string() + ": N*H*W overflows int64");
    if (batch_stats && per_channel == 1)
        fail("expected more than 1 value per channel when training, got input size " +
             x.shape_string());
    if (update_running && s.num_batches_tracked == std::numeric_limits<int64_t>::max())
        fail("num_batches_tracked is at its maximum (" + std::to_string(s.num_batches_tracked) +
             "): one more training step would overflow it; load a smaller count first");
    const int64_t tracked = s.num_batches_tracked + (update_running ? 1 : 0);
    const double factor = !update_running ? 0.0
                          : s.momentum    ? *s.momentum
                                          : 1.0 / static_cast<double>(tracked);
    const bool relu = s.activation == Activation::relu;

    auto record = [&] {
        s.has_forward = true;
        s.forward_training = s.training;
        s.forward_batch_stats = batch_stats;
        s.forward_residual = residual != nullptr;
        s.forward_activation = s.activation;
        s.forward_x = x;
        s.forward_out = relu ? out : Tensor();
    };
    if (x.numel() == 0) {
        // PyTorch: empty output, statistics untouched, but the batch is still counted.
        s.num_batches_tracked = tracked;
        record();
        return;
    }

    std::vector<const Tensor *> tensors{&x, &out};
    if (residual) tensors.push_back(residual);
    const Placement p = place(tensors);
    Buf hx = detail::tensor_buffer(x, p.layout, p.fuse);
    Buf hy = detail::tensor_buffer(out, p.layout, p.fuse);
    Buf hz = residual ? detail::tensor_buffer(*residual, p.layout, p.fuse) : Buf();
    const detail::Call call{s.device, p.layout, x,
                            detail::needs_large_buffers(hx) || detail::needs_large_buffers(hy) ||
                                (residual && detail::needs_large_buffers(hz))};
    const detail::Epilogue epilogue{residual ? hz.raw_buffer() : nullptr, relu};
    // A non-affine module's weight and bias hold 1 and 0: the kernels need no variant for it.
    if (batch_stats) {
        detail::run_train_forward(call, hx, epilogue, s.weight, s.bias, s.running_mean,
                                  s.running_var, s.eps, factor, hy, s.saved_mean_next,
                                  s.saved_invstd_next, s.running_mean_next, s.running_var_next);
        if (update_running) {
            s.commit(s.running_mean, s.running_mean_next);
            s.commit(s.running_var, s.running_var_next);
        }
        std::swap(s.saved_mean, s.saved_mean_next);
        std::swap(s.saved_invstd, s.saved_invstd_next);
    } else {
        detail::run_eval_forward(call, hx, epilogue, s.weight, s.bias, s.running_mean,
                                 s.running_var, s.eps, hy);
    }
    s.num_batches_tracked = tracked;
    record();
}

std::vector<float> BatchNorm2d::forward(const Tensor &x) {
    if (s_->device != Device::CPU || x.device() != Device::CPU)
        fail("forward(x) allocates on the host; use forward(x, out) for device tensors");
    if (x.dtype() != DType::float32)
        fail("forward(x) returns float32; use forward(x, out) for " +
             std::string(dtype_name(x.dtype())) + " tensors");
    check_tensor("input", x, s_->C, s_->device, {});
    std::vector<float> out = host_output(x.numel(), "forward(x)");
    forward(x, Tensor(out.data(), x.sizes()));
    return out;
}

void BatchNorm2d::backward(const Tensor &grad_out, const Tensor &grad_input, BackwardMask mask) {
    backward_impl(grad_out, grad_input, nullptr, mask);
}

void BatchNorm2d::backward_add(const Tensor &grad_out, const Tensor &grad_input,
                               const Tensor &grad_residual, BackwardMask mask) {
    backward_impl(grad_out, grad_input, &grad_residual, mask);
}

void BatchNorm2d::backward_impl(const Tensor &grad_out, const Tensor &grad_input,
                                const Tensor *grad_residual, BackwardMask mask) {
    State &s = *s_;
    if (!s.has_forward) fail("backward() needs a forward() first");
    if (s.training != s.forward_training)
        fail(s.training ? "training-mode backward with no training forward before it: the "
                          "last forward ran in eval mode"
                        : "eval-mode backward after a training-mode forward: call eval() "
                          "before forward(), or train() before backward()");
    if (grad_residual && !s.forward_residual)
        fail("backward_add() needs a forward_add() before it: the last forward had no residual");
    const std::vector<int64_t> &shape = s.forward_x.sizes();
    // The ReLU's mask is read from the forward's output.
    const bool relu = s.forward_activation == Activation::relu;
    const Tensor &y = s.forward_out;
    check_tensor("grad_out", grad_out, s.C, s.device, shape);
    check_same_dtype("grad_out", grad_out, "the forward input", s.forward_x);
    if (mask.input) {
        check_tensor("grad_input", grad_input, s.C, s.device, shape);
        check_same_dtype("grad_input", grad_input, "the forward input", s.forward_x);
        check_no_self_overlap("grad_input", grad_input);
        check_no_alias("grad_input", grad_input, "grad_out", grad_out);
        check_no_alias("grad_input", grad_input, "the forward input", s.forward_x);
        if (relu) check_no_alias("grad_input", grad_input, "the forward output", y);
    }
    if (grad_residual) {
        check_tensor("grad_residual", *grad_residual, s.C, s.device, shape);
        check_same_dtype("grad_residual", *grad_residual, "the forward input", s.forward_x);
        check_no_self_overlap("grad_residual", *grad_residual);
        check_no_alias("grad_residual", *grad_residual, "grad_out", grad_out);
        check_no_alias("grad_residual", *grad_residual, "the forward input", s.forward_x);
        if (relu) check_no_alias("grad_residual", *grad_residual, "the forward output", y);
        if (mask.input) check_no_alias("grad_residual", *grad_residual, "grad_input", grad_input);
    }
    const bool params = mask.params && s.affine;
    const std::vector<StateView> state = s.visible_storage();
    if (mask.input) check_not_state("grad_input", grad_input, state);
    if (grad_residual) check_not_state("grad_residual", *grad_residual, state);
    if (params) {
        check_not_state("grad_out", grad_out, state, {"weight_grad()", "bias_grad()"});
        check_not_state("the forward input", s.forward_x, state, {"weight_grad()", "bias_grad()"});
    }
    if (!mask.input && !params && !grad_residual) return;
    if (grad_out.numel() == 0) return;  // nothing to compute; parameter gradients += 0

    std::vector<const Tensor *> tensors{&s.forward_x, &grad_out};
    if (mask.input) tensors.push_back(&grad_input);
    if (relu) tensors.push_back(&y);
    if (grad_residual) tensors.push_back(grad_residual);
    const Placement p = place(tensors);
    Buf hx = detail::tensor_buffer(s.forward_x, p.layout, p.fuse);
    Buf hdy = detail::tensor_buffer(grad_out, p.layout, p.fuse);
    Buf hdx = mask.input ? detail::tensor_buffer(grad_input, p.layout, p.fuse) : Buf();
    Buf hout = relu ? detail::tensor_buffer(y, p.layout, p.fuse) : Buf();
    Buf hdz = grad_residual ? detail::tensor_buffer(*grad_residual, p.layout, p.fuse) : Buf();
    bool large = false;
    for (Buf *b : {&hx, &hdy, &hdx, &hout, &hdz})
        large = large || (b->dimensions() > 0 && detail::needs_large_buffers(*b));
    const detail::Call call{s.device, p.layout, s.forward_x, large};

    // With the residual's gradient wanted, it is grad_out through the ReLU: computed first, it
    // is then the batch norm's incoming gradient (no mask left to apply). Else the backward
    // kernels apply the mask themselves.
    halide_buffer_t *incoming = hdy.raw_buffer();
    halide_buffer_t *relu_out = relu ? hout.raw_buffer() : nullptr;
    if (grad_residual) {
        detail::run_grad_residual(call, hdy, relu_out, s.ones, hdz);
        incoming = hdz.raw_buffer();
        relu_out = nullptr;
    }
    if (!mask.input && !params) return;
    const bool training = s.forward_batch_stats;
    detail::BackwardBuffers b{hx, incoming, relu_out, training ? s.saved_mean : s.running_mean,
                              training ? s.saved_invstd : s.running_var, s.weight,
                              mask.input ? hdx.raw_buffer() : nullptr, s.grad_weight, s.grad_bias,
                              s.grad_weight_next, s.grad_bias_next};
    detail::run_backward(call, training, params, s.eps, b);
    if (params) {
        s.commit(s.grad_weight, s.grad_weight_next);
        s.commit(s.grad_bias, s.grad_bias_next);
    }
}

std::vector<float> BatchNorm2d::backward(const Tensor &grad_out) {
    if (s_->device != Device::CPU || grad_out.device() != Device::CPU)
        fail("backward(grad_out) allocates on the host; use backward(grad_out, grad_input)");
    if (grad_out.dtype() != DType::float32)
        fail("backward(grad_out) returns float32; use backward(grad_out, grad_input) for " +
             std::string(dtype_name(grad_out.dtype())) + " tensors");
    check_tensor("grad_out", grad_out, s_->C, s_->device, {});
    std::vector<float> dx = host_output(grad_out.numel(), "backward(grad_out)");
    backward(grad_out, Tensor(dx.data(), grad_out.sizes()));
    return dx;
}

void BatchNorm2d::zero_grad() {
    s_->fill(s_->grad_weight, 0.0);
    s_->fill(s_->grad_bias, 0.0);
}

void BatchNorm2d::reset_running_stats() {
    s_->fill(s_->running_mean, 0.0);
    s_->fill(s_->running_var, 1.0);
    s_->num_batches_tracked = 0;
}

void BatchNorm2d::reset_parameters() {
    reset_running_stats();
    s_->fill(s_->weight, 1.0);
    s_->fill(s_->bias, 0.0);
}

StateDict BatchNorm2d::state_dict() const {
    StateDict d;
    if (s_->affine) {
        d.weight = s_->read(s_->weight);
        d.bias = s_->read(s_->bias);
    }
    if (s_->track) {
        d.running_mean = s_->read(s_->running_mean);
        d.running_var = s_->read(s_->running_var);
        d.num_batches_tracked = s_->num_batches_tracked;
    }
    return d;
}

void BatchNorm2d::load_state_dict(const StateDict &d) {
    const size_t C = static_cast<size_t>(s_->C);
    auto check = [&](const char *name, const std::vector<double> &v, bool present) {
        const size_t want = present ? C : 0;
        if (v.size() != want)
            fail(std::string("load_state_dict: ") + name + " has " + std::to_string(v.size()) +
                 " values, expected " + std::to_string(want));
    };
    check("weight", d.weight, s_->affine);
    check("bias", d.bias, s_->affine);
    check("running_mean", d.running_mean, s_->track);
    check("running_var", d.running_var, s_->track);
    if (d.num_batches_tracked < 0) fail("load_state_dict: num_batches_tracked must be >= 0");
    if (s_->affine) {
        s_->write_param(s_->weight, d.weight);
        s_->write_param(s_->bias, d.bias);
    }
    if (s_->track) {
        s_->write_param(s_->running_mean, d.running_mean);
        s_->write_param(s_->running_var, d.running_var);
        s_->num_batches_tracked = d.num_batches_tracked;
    }
}

Tensor BatchNorm2d::weight() const {
    return s_->affine ? storage_view(s_->weight, s_->C, s_->device, s_->storage_dtype) : Tensor();
}
Tensor BatchNorm2d::bias() const {
    return s_->affine ? storage_view(s_->bias, s_->C, s_->device, s_->storage_dtype) : Tensor();
}
Tensor BatchNorm2d::running_mean() const {
    return s_->track ? storage_view(s_->running_mean, s_->C, s_->device, s_->storage_dtype) : Tensor();
}
Tensor BatchNorm2d::running_var() const {
    return s_->track ? storage_view(s_->running_var, s_->C, s_->device, s_->storage_dtype) : Tensor();
}
Tensor BatchNorm2d::weight_grad() const {
    return s_->affine ? storage_view(s_->grad_weight, s_->C, s_->device, s_->storage_dtype) : Tensor();
}
Tensor BatchNorm2d::bias_grad() const {
    return s_->affine ? storage_view(s_->grad_bias, s_->C, s_->device, s_->storage_dtype) : Tensor();
}
int64_t BatchNorm2d::num_batches_tracked() const { return s_->num_batches_tracked; }

BatchNorm2d &BatchNorm2d::to(Device device) {
    State &s = *s_;
    if (device == s.device) return *this;
    if (!device_available(device))
        fail(std::string("to(") + device_name(device) +
             "): device not usable: " + device_unavailable_reason(device));
    // Read everything to the host, build the new storage, then swap: all or nothing.
    std::vector<Buf *> bufs = s.all_buffers();
    std::vector<Buf> moved;
    for (Buf *b : bufs) {
        detail::sync_to_host(*b, s.device, "copying module state to the host");
        Buf copy = s.allocate();
        if (s.C > 0) std::memcpy(copy.data(), b->data(), dtype_size(s.storage_dtype) * s.C);
        detail::sync_to_device(copy, device, "moving module state to the device");
        moved.push_back(std::move(copy));
    }
    for (size_t i = 0; i < bufs.size(); ++i) *bufs[i] = std::move(moved[i]);
    s.device = device;
    s.has_forward = false;  // the saved input lives on the old device
    return *this;
}

Device BatchNorm2d::device() const { return s_->device; }
int64_t BatchNorm2d::num_features() const { return s_->C; }
DType BatchNorm2d::dtype() const { return s_->dtype; }
double BatchNorm2d::eps() const { return s_->eps; }
std::optional<double> BatchNorm2d::momentum() const { return s_->momentum; }
bool BatchNorm2d::affine() const { return s_->affine; }
bool BatchNorm2d::track_running_stats() const { return s_->track; }
Activation BatchNorm2d::activation() const { return s_->activation; }
void BatchNorm2d::set_activation(Activation activation) {
    if (activation != Activation::none && activation != Activation::relu)
        fail("set_activation: unknown activation " + std::to_string(static_cast<int>(activation)));
    s_->activation = activation;
}

const char *activation_name(Activation a) {
    switch (a) {
    case Activation::none: return "none";
    case Activation::relu: return "relu";
    }
    return "unknown";
}

void BatchNorm2d::set_eps(double eps) {
    check_eps(eps);
    s_->eps = eps;
}

void BatchNorm2d::set_momentum(std::optional<double> momentum) {
    check_momentum(momentum);
    s_->momentum = momentum;
}

std::string BatchNorm2d::to_string() const {
    return "BatchNorm2d(" + std::to_string(s_->C) + ", eps=" + fmt(s_->eps) +
           ", momentum=" + (s_->momentum ? fmt(*s_->momentum) : "None") +
           ", affine=" + (s_->affine ? "True" : "False") +
           ", track_running_stats=" + (s_->track ? "True" : "False") +
           (s_->dtype == DType::float32 ? "" : std::string(", dtype=") + dtype_name(s_->dtype)) +
           (s_->activation == Activation::none ? ""
                                               : std::string(", activation=") +
                                                     activation_name(s_->activation)) +
           ")";
}

}  // namespace bn2d
