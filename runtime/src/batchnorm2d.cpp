// BatchNorm2d: module state, PyTorch's mode logic, validation, all-or-nothing commits.
#include "bn2d/batchnorm2d.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "argument_checks.h"
#include "bn2d/device.h"
#include "internal.h"
#include "module_state.h"

namespace bn2d {

using Buf = detail::HalideBuffer;

using detail::StateView;
using detail::storage_view;

namespace {

[[noreturn]] void fail(const std::string &msg) { throw Error("BatchNorm2d: " + msg); }

const detail::ArgumentChecks check{"BatchNorm2d"};

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

// The output of the allocating forward(x) and backward(grad_out).
std::vector<float> host_output(int64_t numel, const char *call) {
    try {
        return std::vector<float>(static_cast<size_t>(numel));
    } catch (const std::exception &) {  // bad_alloc, length_error
        fail(std::string(call) + ": cannot allocate " + std::to_string(numel) +
             " floats for the output");
    }
}

}  // namespace

// This process's batch: BatchNorm2d's statistics.
class BatchNorm2d::LocalStatistics final : public Statistics {
public:
    const char *module_name() const override { return "BatchNorm2d"; }
    void train_forward(BatchNorm2d &m, const Tensor &x, const Tensor *residual,
                       const Tensor &out) override {
        m.local_forward(x, residual, out);
    }
    void train_backward(BatchNorm2d &m, const Tensor &grad_out, const Tensor &grad_input,
                        const Tensor *grad_residual, BackwardMask mask) override {
        m.local_backward(grad_out, grad_input, grad_residual, mask);
    }
};

BatchNorm2d::BatchNorm2d(int64_t num_features, const Options &o) : s_(std::make_unique<State>()) {
    detail::init_runtime();
    // 0 is a module with no channels, as in PyTorch: it accepts [N, 0, H, W] and does nothing.
    if (num_features < 0) fail("num_features must be >= 0, got " + std::to_string(num_features));
    if (num_features > INT32_MAX) fail("num_features too large");
    check_eps(o.eps);
    check_momentum(o.momentum);
    detail::check_enums("BatchNorm2d", o.dtype, Device::CPU);
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
    s_->statistics = std::make_shared<LocalStatistics>();
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

}  // namespace

void BatchNorm2d::forward(const Tensor &x, const Tensor &out) { forward_impl(x, nullptr, out); }

void BatchNorm2d::forward_add(const Tensor &x, const Tensor &residual, const Tensor &out) {
    forward_impl(x, &residual, out);
}

// Validates a forward and builds its buffers. `synced`: the statistics come from every process
// of a SyncBatchNorm2d group, so only their total count must exceed 1 (checked after the
// exchange).
BatchNorm2d::ForwardPlan BatchNorm2d::plan_forward(const Tensor &x, const Tensor *residual,
                                                   const Tensor &out, bool synced) {
    State &s = *s_;
    check.tensor("input", x, s.C, s.device, {});
    check.tensor("out", out, s.C, s.device, x.sizes());
    check.input_dtype("input", x, s.dtype);
    check.same_dtype("out", out, "input", x);
    check.no_self_overlap("out", out);
    check.no_alias("out", out, "input", x);
    if (residual) {
        check.tensor("residual", *residual, s.C, s.device, x.sizes());
        check.same_dtype("residual", *residual, "input", x);
        check.no_alias("out", out, "residual", *residual);
    }

    ForwardPlan p;
    p.batch_stats = s.training || !s.track;
    p.update_running = s.training && s.track;
    const std::vector<StateView> state = s.visible_storage();
    check_not_state("out", out, state);
    if (p.update_running) {
        check_not_state("input", x, state, {"running_mean()", "running_var()"});
        if (residual)
            check_not_state("residual", *residual, state, {"running_mean()", "running_var()"});
    }
    // N*H*W may overflow when C = 0 makes the tensor empty.
    if (__builtin_mul_overflow(x.size(0), x.size(2), &p.per_channel) ||
        __builtin_mul_overflow(p.per_channel, x.size(3), &p.per_channel))
        fail("input " + x.shape_string() + ": N*H*W overflows int64");
    if (p.batch_stats && p.per_channel == 1 && !synced)
        fail("expected more than 1 value per channel when training, got input size " +
             x.shape_string());
    if (p.update_running && s.num_batches_tracked == std::numeric_limits<int64_t>::max())
        fail("num_batches_tracked is at its maximum (" + std::to_string(s.num_batches_tracked) +
             "): one more training step would overflow it; load a smaller count first");
    p.tracked = s.num_batches_tracked + (p.update_running ? 1 : 0);
    p.factor = !p.update_running ? 0.0
               : s.momentum      ? *s.momentum
                                 : 1.0 / static_cast<double>(p.tracked);
    p.relu = s.activation == Activation::relu;
    // PyTorch: an empty input gives an empty output, statistics untouched, but the batch is
    // still counted.
    p.empty = x.numel() == 0;
    if (p.empty) return p;

    std::vector<const Tensor *> tensors{&x, &out};
    if (residual) tensors.push_back(residual);
    const detail::Placement place_ = detail::place(tensors);
    p.layout = place_.layout;
    p.hx = detail::tensor_buffer(x, p.layout, place_.fuse);
    p.hy = detail::tensor_buffer(out, p.layout, place_.fuse);
    if (residual) p.hz = detail::tensor_buffer(*residual, p.layout, place_.fuse);
    p.large = detail::needs_large_buffers(p.hx) || detail::needs_large_buffers(p.hy) ||
              (residual && detail::needs_large_buffers(p.hz));
    p.residual = residual != nullptr;
    return p;
}

// The forward succeeded: what backward needs.
void BatchNorm2d::record_forward(const ForwardPlan &p, const Tensor &x, bool residual,
                                 const Tensor &out, int64_t synced_count) {
    State &s = *s_;
    s.num_batches_tracked = p.tracked;
    s.has_forward = true;
    s.forward_training = s.training;
    s.forward_batch_stats = p.batch_stats;
    s.forward_residual = residual;
    s.forward_activation = s.activation;
    s.forward_x = x;
    s.forward_out = p.relu ? out : Tensor();
    s.forward_count = synced_count;
}

void BatchNorm2d::set_statistics(std::shared_ptr<Statistics> statistics) {
    if (!statistics) fail("set_statistics: null");
    s_->statistics = std::move(statistics);
    s_->forward_count = -1;  // a backward needs a forward with these statistics
}

BatchNorm2d::Statistics &BatchNorm2d::statistics() const { return *s_->statistics; }

void BatchNorm2d::forward_impl(const Tensor &x, const Tensor *residual, const Tensor &out) {
    if (s_->training)
        s_->statistics->train_forward(*this, x, residual, out);
    else
        local_forward(x, residual, out);
}

void BatchNorm2d::local_forward(const Tensor &x, const Tensor *residual, const Tensor &out) {
    State &s = *s_;
    ForwardPlan p = plan_forward(x, residual, out, false);
    if (!p.empty) {
        const detail::Call call = p.call(s, x);
        if (p.batch_stats) {
            detail::train_forward(call, p.buffers(s),
                                  {s.saved_mean_next, s.saved_invstd_next, s.running_mean_next,
                                   s.running_var_next, p.factor},
                                  s.partial, s.merged_var);
            if (p.update_running) {
                s.commit(s.running_mean, s.running_mean_next);
                s.commit(s.running_var, s.running_var_next);
            }
            std::swap(s.saved_mean, s.saved_mean_next);
            std::swap(s.saved_invstd, s.saved_invstd_next);
        } else {
            detail::run_eval_forward(call, p.buffers(s));
        }
    }
    record_forward(p, x, residual != nullptr, out, -1);
}

std::vector<float> BatchNorm2d::forward(const Tensor &x) {
    if (s_->device != Device::CPU || x.device() != Device::CPU)
        fail("forward(x) allocates on the host; use forward(x, out) for device tensors");
    if (x.dtype() != DType::float32)
        fail("forward(x) returns float32; use forward(x, out) for " +
             std::string(dtype_name(x.dtype())) + " tensors");
    check.tensor("input", x, s_->C, s_->device, {});
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

BatchNorm2d::BackwardPlan BatchNorm2d::plan_backward(const Tensor &grad_out,
                                                     const Tensor &grad_input,
                                                     const Tensor *grad_residual,
                                                     BackwardMask mask) {
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
    BackwardPlan p;
    // The ReLU's mask is read from the forward's output.
    p.relu = s.forward_activation == Activation::relu;
    const Tensor &y = s.forward_out;
    check.tensor("grad_out", grad_out, s.C, s.device, shape);
    check.same_dtype("grad_out", grad_out, "the forward input", s.forward_x);
    if (mask.input) {
        check.tensor("grad_input", grad_input, s.C, s.device, shape);
        check.same_dtype("grad_input", grad_input, "the forward input", s.forward_x);
        check.no_self_overlap("grad_input", grad_input);
        check.no_alias("grad_input", grad_input, "grad_out", grad_out);
        check.no_alias("grad_input", grad_input, "the forward input", s.forward_x);
        if (p.relu) check.no_alias("grad_input", grad_input, "the forward output", y);
    }
    if (grad_residual) {
        check.tensor("grad_residual", *grad_residual, s.C, s.device, shape);
        check.same_dtype("grad_residual", *grad_residual, "the forward input", s.forward_x);
        check.no_self_overlap("grad_residual", *grad_residual);
        check.no_alias("grad_residual", *grad_residual, "grad_out", grad_out);
        check.no_alias("grad_residual", *grad_residual, "the forward input", s.forward_x);
        if (p.relu) check.no_alias("grad_residual", *grad_residual, "the forward output", y);
        if (mask.input) check.no_alias("grad_residual", *grad_residual, "grad_input", grad_input);
    }
    p.params = mask.params && s.affine;
    p.training = s.forward_batch_stats;
    const std::vector<StateView> state = s.visible_storage();
    if (mask.input) check_not_state("grad_input", grad_input, state);
    if (grad_residual) check_not_state("grad_residual", *grad_residual, state);
    if (p.params) {
        check_not_state("grad_out", grad_out, state, {"weight_grad()", "bias_grad()"});
        check_not_state("the forward input", s.forward_x, state, {"weight_grad()", "bias_grad()"});
    }
    // Nothing to compute for an empty tensor: parameter gradients += 0.
    p.run = (mask.input || p.params || grad_residual) && grad_out.numel() > 0;
    if (!p.run) return p;

    std::vector<const Tensor *> tensors{&s.forward_x, &grad_out};
    if (mask.input) tensors.push_back(&grad_input);
    if (p.relu) tensors.push_back(&y);
    if (grad_residual) tensors.push_back(grad_residual);
    const detail::Placement place_ = detail::place(tensors);
    p.layout = place_.layout;
    p.hx = detail::tensor_buffer(s.forward_x, p.layout, place_.fuse);
    p.hdy = detail::tensor_buffer(grad_out, p.layout, place_.fuse);
    if (mask.input) p.hdx = detail::tensor_buffer(grad_input, p.layout, place_.fuse);
    if (p.relu) p.hout = detail::tensor_buffer(y, p.layout, place_.fuse);
    if (grad_residual) p.hdz = detail::tensor_buffer(*grad_residual, p.layout, place_.fuse);
    for (Buf *b : {&p.hx, &p.hdy, &p.hdx, &p.hout, &p.hdz})
        p.large = p.large || (b->dimensions() > 0 && detail::needs_large_buffers(*b));
    return p;
}

// With the residual's gradient wanted, it is grad_out through the ReLU: computed first, it is
// then the batch norm's incoming gradient (no mask left to apply). Else the backward kernels
// apply the mask themselves.
void BatchNorm2d::residual_gradient(BackwardPlan &p) {
    if (p.hdz.dimensions() == 0) return;
    detail::run_grad_residual(p.call(*s_), p.hdy, p.relu_out(), s_->ones, p.hdz);
    p.residual_done = true;
}

void BatchNorm2d::backward_impl(const Tensor &grad_out, const Tensor &grad_input,
                                const Tensor *grad_residual, BackwardMask mask) {
    // As in PyTorch, only grad_input needs the other processes' sums.
    if (s_->training && mask.input)
        s_->statistics->train_backward(*this, grad_out, grad_input, grad_residual, mask);
    else
        local_backward(grad_out, grad_input, grad_residual, mask);
}

void BatchNorm2d::local_backward(const Tensor &grad_out, const Tensor &grad_input,
                                 const Tensor *grad_residual, BackwardMask mask) {
    State &s = *s_;
    BackwardPlan p = plan_backward(grad_out, grad_input, grad_residual, mask);
    if (!p.run) return;
    residual_gradient(p);
    if (!mask.input && !p.params) return;
    detail::BackwardBuffers b{p.hx,
                              p.incoming(),
                              p.relu_out(),
                              p.training ? s.saved_mean : s.running_mean,
                              p.training ? s.saved_invstd : s.running_var,
                              s.weight,
                              mask.input ? p.hdx.raw_buffer() : nullptr,
                              s.grad_weight,
                              s.grad_bias,
                              s.grad_weight_next,
                              s.grad_bias_next,
                              s.grad_sums_buffer()};
    detail::backward(p.call(s), p.training, p.params, s.eps, b, grad_out.numel() / s.C);
    if (p.params) {
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
    check.tensor("grad_out", grad_out, s_->C, s_->device, {});
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
    return s_->track ? storage_view(s_->running_mean, s_->C, s_->device, s_->storage_dtype)
                     : Tensor();
}
Tensor BatchNorm2d::running_var() const {
    return s_->track ? storage_view(s_->running_var, s_->C, s_->device, s_->storage_dtype)
                     : Tensor();
}
Tensor BatchNorm2d::weight_grad() const {
    return s_->affine ? storage_view(s_->grad_weight, s_->C, s_->device, s_->storage_dtype)
                      : Tensor();
}
Tensor BatchNorm2d::bias_grad() const {
    return s_->affine ? storage_view(s_->grad_bias, s_->C, s_->device, s_->storage_dtype)
                      : Tensor();
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
    s.drop_scratch();
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
    return std::string(s_->statistics->module_name()) + "(" + std::to_string(s_->C) +
           ", eps=" + fmt(s_->eps) + ", momentum=" + (s_->momentum ? fmt(*s_->momentum) : "None") +
           ", affine=" + (s_->affine ? "True" : "False") +
           ", track_running_stats=" + (s_->track ? "True" : "False") +
           (s_->dtype == DType::float32 ? "" : std::string(", dtype=") + dtype_name(s_->dtype)) +
           (s_->activation == Activation::none
                ? ""
                : std::string(", activation=") + activation_name(s_->activation)) +
           ")";
}

}  // namespace bn2d
