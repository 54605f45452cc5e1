// BatchNorm2d: the module that owns batchnorm2d's state, with torch.nn.BatchNorm2d semantics.
//
// The kernels are stateless AOT Halide pipelines; this class holds weight, bias,
// running_mean, running_var and num_batches_tracked, decides (as PyTorch does) whether to use
// batch or running statistics, validates every input before any kernel runs, and commits state
// only after a kernel succeeded. Every failure is a bn2d::Error and leaves the state as it was.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bn2d/errors.h"
#include "bn2d/tensor.h"

namespace bn2d {

// What the fused kernels apply after the normalization (and after adding a residual).
enum class Activation { none, relu };
const char *activation_name(Activation a);  // "none", "relu"

struct Options {
    double eps = 1e-5;
    // std::nullopt: cumulative moving average, factor 1/num_batches_tracked.
    std::optional<double> momentum = 0.1;
    bool affine = true;
    bool track_running_stats = true;
    // Type of weight, bias and the running statistics, as module.to(dtype) sets it in PyTorch.
    // Inputs of that type are accepted, and for float32 parameters also bfloat16 and float16
    // inputs (PyTorch's mixed precision: statistics and arithmetic in float32). 16-bit
    // parameters are held in float32 storage, rounded to their type after every update, so
    // they hold exactly the values PyTorch's would; the views below are then float32 tensors.
    DType dtype = DType::float32;
    // y = relu(bn(x)) (and relu(bn(x) + z) with forward_add), in the same pass over the data.
    // Backward then reads the forward's output y for the ReLU's mask: keep it alive and
    // unchanged until backward(), as PyTorch's ReLU keeps its result.
    Activation activation = Activation::none;
};

// Which gradients backward() computes, like ATen's output_mask. Unrequested work is skipped
// by picking a kernel that does not do it.
struct BackwardMask {
    bool input = true;   // grad_input
    bool params = true;  // grad_weight and grad_bias (affine only)
};

// A host copy of the module state, in PyTorch's state_dict order and names. Values are
// float64, which holds every parameter dtype exactly; loading rounds them to the module's.
struct StateDict {
    std::vector<double> weight, bias, running_mean, running_var;  // empty when absent
    int64_t num_batches_tracked = 0;
};

class BatchNorm2d {
public:
    explicit BatchNorm2d(int64_t num_features, const Options &options = {});
    BatchNorm2d(int64_t num_features, double eps, std::optional<double> momentum = 0.1,
                bool affine = true, bool track_running_stats = true);
    ~BatchNorm2d();
    BatchNorm2d(BatchNorm2d &&) noexcept;
    BatchNorm2d &operator=(BatchNorm2d &&) noexcept;
    BatchNorm2d(const BatchNorm2d &) = delete;
    BatchNorm2d &operator=(const BatchNorm2d &) = delete;

    // ---- mode ----
    BatchNorm2d &train(bool on = true);
    BatchNorm2d &eval() { return train(false); }
    bool is_training() const;

    // ---- forward ----
    // y = (x - mean) / sqrt(var + eps) * weight + bias, x and out [N, C, H, W] of the same
    // shape and dtype, in any layout: NCHW (W stride 1) and channels_last (C stride 1) run
    // kernels of their own, any other strides (and x and out in different layouts) a general
    // strided kernel. out must not overlap x or itself.
    // Batch statistics when training or when running stats are not tracked; in training with
    // tracking, also updates running_mean/var and num_batches_tracked.
    // No allocation on this path. x must stay alive and unchanged until backward() if you call it.
    void forward(const Tensor &x, const Tensor &out);
    // Convenience: allocates the output (host tensors only), contiguous NCHW.
    std::vector<float> forward(const Tensor &x);
    // The residual block's tail in one pass: out = act(bn(x) + residual), residual of x's shape
    // and dtype in any layout, not overlapping out (in-place add is refused, as an error).
    // Same state updates as forward(); backward() and backward_add() follow it.
    void forward_add(const Tensor &x, const Tensor &residual, const Tensor &out);

    // ---- backward ----
    // Gradients of the last forward(), in that forward's mode. grad_input may be undefined
    // (Tensor()) when mask.input is false. Parameter gradients accumulate into weight_grad()
    // and bias_grad() as autograd accumulates .grad.
    void backward(const Tensor &grad_out, const Tensor &grad_input, BackwardMask mask = {});
    std::vector<float> backward(const Tensor &grad_out);  // allocating, host only
    // After forward_add(): also the residual's gradient, grad_residual = grad_out through the
    // activation (grad_out where out > 0 or NaN, else 0, for relu; grad_out itself for none).
    void backward_add(const Tensor &grad_out, const Tensor &grad_input, const Tensor &grad_residual,
                      BackwardMask mask = {});
    void zero_grad();

    // ---- state ----
    void reset_running_stats();  // running_mean 0, running_var 1, num_batches_tracked 0
    void reset_parameters();     // reset_running_stats(), weight 1, bias 0
    StateDict state_dict() const;
    void load_state_dict(const StateDict &state);  // validated; all or nothing

    // Views of the module's own storage, on device() (undefined Tensor when absent): float32,
    // or float64 for a float64 module.
    Tensor weight() const;
    Tensor bias() const;
    Tensor running_mean() const;
    Tensor running_var() const;
    Tensor weight_grad() const;
    Tensor bias_grad() const;
    int64_t num_batches_tracked() const;

    // Moves parameters, buffers and gradients to a device (or back to the CPU). After to(),
    // forward/backward take tensors on that device. Throws if the device is not usable.
    BatchNorm2d &to(Device device);
    Device device() const;

    int64_t num_features() const;
    DType dtype() const;  // of the parameters and running statistics (Options::dtype)
    double eps() const;
    std::optional<double> momentum() const;
    bool affine() const;
    bool track_running_stats() const;
    Activation activation() const;
    void set_activation(Activation activation);  // takes effect at the next forward
    void set_eps(double eps);
    void set_momentum(std::optional<double> momentum);

    // "BatchNorm2d(100, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    std::string to_string() const;

protected:
    // Where a training step's batch statistics come from: the module is given one, and every
    // training forward, and every training backward that computes grad_input, runs through it.
    // BatchNorm2d's is this process's batch; SyncBatchNorm2d's is every process's of a group
    // (runtime/src/sync.cpp). Defined in runtime/src/module_state.h.
    class Statistics;
    void set_statistics(std::shared_ptr<Statistics> statistics);
    Statistics &statistics() const;

private:
    struct State;
    struct ForwardPlan;
    struct BackwardPlan;
    class LocalStatistics;
    void forward_impl(const Tensor &x, const Tensor *residual, const Tensor &out);
    // The forward and backward on this process's batch (LocalStatistics, and every eval call).
    void local_forward(const Tensor &x, const Tensor *residual, const Tensor &out);
    void local_backward(const Tensor &grad_out, const Tensor &grad_input,
                        const Tensor *grad_residual, BackwardMask mask);
    ForwardPlan plan_forward(const Tensor &x, const Tensor *residual, const Tensor &out,
                             bool synced);
    // synced_count: values per channel over the processes (Statistics over a group), or -1.
    void record_forward(const ForwardPlan &p, const Tensor &x, bool residual, const Tensor &out,
                        int64_t synced_count);
    void backward_impl(const Tensor &grad_out, const Tensor &grad_input,
                       const Tensor *grad_residual, BackwardMask mask);
    BackwardPlan plan_backward(const Tensor &grad_out, const Tensor &grad_input,
                               const Tensor *grad_residual, BackwardMask mask);
    void residual_gradient(BackwardPlan &p);

    std::unique_ptr<State> s_;
};

}  // namespace bn2d
