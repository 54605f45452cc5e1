// The state of a BatchNorm2d: storage on the module's device, the last forward for backward, the
// scratch buffers kernels write before a commit, and the Statistics strategy it was given.
#pragma once

#include <cstring>
#include <memory>
#include <vector>

#include "bn2d/batchnorm2d.h"
#include "internal.h"

namespace bn2d {

using Buf = detail::HalideBuffer;

namespace detail {
// Rounds a value to a parameter dtype (16-bit parameters live in float32 storage).
inline double round_to(DType t, double v) {
    switch (t) {
    case DType::float32: return static_cast<float>(v);
    case DType::bfloat16: return float_from_bfloat16(bfloat16_from_float(static_cast<float>(v)));
    case DType::float16: return float_from_float16(float16_from_float(static_cast<float>(v)));
    case DType::float64: return v;
    }
    return v;
}

// A view of C per-channel values of the module's storage, as weight() etc. return it.
inline Tensor storage_view(Buf &b, int64_t C, Device d, DType t) {
    if (d == Device::CPU) return Tensor(b.data(), t, {C});
    if (C == 0) return Tensor::on_device(0, {0}, d, t);  // no device allocation
    return Tensor::on_device(detail::app_device_handle(b, d), {C}, d, t);
}

// Module storage an application can see (weight(), ..., bias_grad()), named for errors.
struct StateView {
    const char *name;
    Tensor view;
};

}  // namespace detail

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

    // Float64 scratch on the module's device, allocated at first use (to() drops them):
    //   grad_sums  (C, 2) a training backward's {sum(dy), sum(dy * (x - mean))}: train_bwd_params
    //              writes them; statistics over a group all-reduce them
    //   partial    (C, 3) this process's {count, mean, M2} (split strategy, group statistics)
    //   merged_var (C, storage dtype) the merged biased variance the forward normalizes with
    Buf grad_sums, partial, merged_var;
    // Where training statistics come from (never null): this process's batch, or a group's.
    std::shared_ptr<BatchNorm2d::Statistics> statistics;

    // The last successful forward, for backward.
    bool has_forward = false;
    bool forward_training = false;     // module mode at that forward
    bool forward_batch_stats = false;  // batch statistics were used
    bool forward_residual = false;     // forward_add
    Activation forward_activation = Activation::none;
    Tensor forward_x;
    Tensor forward_out;  // read by backward for the ReLU's mask (relu only)
    // Values per channel the statistics were over, all processes of a group; -1 when they were
    // this process's alone.
    int64_t forward_count = -1;
    bool forward_synced() const { return forward_count >= 0; }

    // A float64 buffer of C x `fields` (x `processes`) values on the module's device, filled
    // with zeros.
    Buf scratch(int fields, int processes = 0) const {
        const halide_type_t f64(halide_type_float, 64);
        const int c = static_cast<int>(C);
        Buf b = processes > 0 ? Buf(f64, c, fields, processes) : Buf(f64, c, fields);
        if (b.number_of_elements() > 0) std::memset(b.data(), 0, b.size_in_bytes());
        detail::sync_to_device(b, device, "allocating scratch on the device");
        return b;
    }
    Buf &grad_sums_buffer() {
        if (!grad_sums.data()) grad_sums = scratch(2);
        return grad_sums;
    }
    Buf &partial_buffer() {
        if (!partial.data()) partial = scratch(3);
        return partial;
    }
    Buf &merged_var_buffer() {
        if (!merged_var.data()) {
            merged_var = allocate();
            detail::sync_to_device(merged_var, device, "allocating scratch on the device");
        }
        return merged_var;
    }
    void drop_scratch() { grad_sums = partial = merged_var = Buf(); }

    std::vector<Buf *> all_buffers() {
        return {&weight,
                &bias,
                &running_mean,
                &running_var,
                &grad_weight,
                &grad_bias,
                &running_mean_next,
                &running_var_next,
                &grad_weight_next,
                &grad_bias_next,
                &saved_mean,
                &saved_invstd,
                &saved_mean_next,
                &saved_invstd_next,
                &ones};
    }

    // The storage behind weight(), bias(), running_mean(), running_var(), weight_grad() and
    // bias_grad(), for the in-place checks.
    std::vector<detail::StateView> visible_storage() {
        auto v = [&](Buf &b) { return detail::storage_view(b, C, device, storage_dtype); };
        return {{"weight()", v(weight)},
                {"bias()", v(bias)},
                {"running_mean()", v(running_mean)},
                {"running_var()", v(running_var)},
                {"weight_grad()", v(grad_weight)},
                {"bias_grad()", v(grad_bias)}};
    }

    // ---- storage helpers (host or device) ----
    const halide_device_interface_t *iface() const { return detail::device_interface(device); }

    Buf allocate() const { return Buf(detail::element_type(storage_dtype), static_cast<int>(C)); }

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
            const double r = detail::round_to(round, detail::round_to(storage_dtype, v[i]));
            if (storage_dtype == DType::float64)
                static_cast<double *>(b.data())[i] = r;
            else
                static_cast<float *>(b.data())[i] = static_cast<float>(r);
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
        detail::halide_call("committing module state on the device", [&](void *uc) {
            return halide_buffer_copy(uc, src.raw_buffer(), iface(), dst.raw_buffer());
        });
        dst.set_host_dirty(false);
        dst.set_device_dirty();
    }
};

// What a forward will do, decided by validating its arguments: the statistics it uses, the
// state it updates, and the kernels' buffers (none when x has no element).
struct BatchNorm2d::ForwardPlan {
    bool batch_stats = false;     // PyTorch: in training, or whenever stats are not tracked
    bool update_running = false;  // training with tracking
    bool relu = false;
    int64_t per_channel = 0;  // N*H*W
    int64_t tracked = 0;      // num_batches_tracked after this call
    double factor = 0.0;      // exponential_average_factor
    bool empty = true;        // x has no element: no kernel runs
    detail::Layout layout = detail::Layout::nchw;
    bool large = false;
    Buf hx, hy, hz;
    bool residual = false;

    // Pointers into the Bufs are taken here, when used: a plan is moved around.
    // A non-affine module's weight and bias hold 1 and 0: the kernels need no variant for it.
    detail::ForwardBuffers buffers(State &s) {
        return {hx.raw_buffer(),
                s.weight.raw_buffer(),
                s.bias.raw_buffer(),
                s.running_mean.raw_buffer(),
                s.running_var.raw_buffer(),
                hy.raw_buffer(),
                {residual ? hz.raw_buffer() : nullptr, relu},
                s.eps};
    }

    detail::Call call(const State &s, const Tensor &x) const {
        return {s.device, layout, x, large};
    }
};

// What a backward will do, decided by validating its arguments, and its buffers.
struct BatchNorm2d::BackwardPlan {
    bool run = false;       // some kernel has work to do
    bool relu = false;      // the forward ended in a ReLU: its output masks grad_out
    bool params = false;    // parameter gradients wanted (and the module is affine)
    bool training = false;  // batch statistics (saved mean and invstd), else running ones
    detail::Layout layout = detail::Layout::nchw;
    bool large = false;
    Buf hx, hdy, hdx, hout, hdz;
    bool residual_done = false;  // hdz holds the gradient through the ReLU (residual_gradient)

    // The gradient reaching the batch norm, and the ReLU output masking it (null: no mask).
    halide_buffer_t *incoming() { return residual_done ? hdz.raw_buffer() : hdy.raw_buffer(); }
    halide_buffer_t *relu_out() { return relu && !residual_done ? hout.raw_buffer() : nullptr; }

    detail::Call call(const State &s) const { return {s.device, layout, s.forward_x, large}; }
};

// Where a training step's batch statistics come from (BatchNorm2d::set_statistics): a strategy
// runs the whole training forward, and the training backward that computes grad_input, from
// the module's steps below (a nested class may call them; its subclasses reach them here).
//   BatchNorm2d::LocalStatistics (batchnorm2d.cpp): this process's batch
//   GroupStatistics (sync.cpp): every process's of a Communicator's group, for SyncBatchNorm2d
class BatchNorm2d::Statistics {
public:
    virtual ~Statistics() = default;
    // The module's name in to_string(): "BatchNorm2d", "SyncBatchNorm".
    virtual const char *module_name() const = 0;
    virtual void train_forward(BatchNorm2d &m, const Tensor &x, const Tensor *residual,
                               const Tensor &out) = 0;
    virtual void train_backward(BatchNorm2d &m, const Tensor &grad_out, const Tensor &grad_input,
                                const Tensor *grad_residual, BackwardMask mask) = 0;

protected:
    using State = BatchNorm2d::State;
    using ForwardPlan = BatchNorm2d::ForwardPlan;
    using BackwardPlan = BatchNorm2d::BackwardPlan;
    static State &state(BatchNorm2d &m) { return *m.s_; }
    static ForwardPlan plan_forward(BatchNorm2d &m, const Tensor &x, const Tensor *residual,
                                    const Tensor &out, bool synced) {
        return m.plan_forward(x, residual, out, synced);
    }
    static void record_forward(BatchNorm2d &m, const ForwardPlan &p, const Tensor &x, bool residual,
                               const Tensor &out, int64_t synced_count) {
        m.record_forward(p, x, residual, out, synced_count);
    }
    static BackwardPlan plan_backward(BatchNorm2d &m, const Tensor &grad_out,
                                      const Tensor &grad_input, const Tensor *grad_residual,
                                      BackwardMask mask) {
        return m.plan_backward(grad_out, grad_input, grad_residual, mask);
    }
    static void residual_gradient(BatchNorm2d &m, BackwardPlan &p) { m.residual_gradient(p); }
};

}  // namespace bn2d
