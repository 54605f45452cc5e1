// Internals of the module: Halide buffers over Tensors, error capture, kernel dispatch.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "HalideBuffer.h"
#include "HalideRuntime.h"
#include "bn2d/errors.h"
#include "bn2d/settings.h"
#include "bn2d/tensor.h"
#include "bn2d_vocabulary.h"

namespace bn2d::detail {

using HalideBuffer = Halide::Runtime::Buffer<void>;

// The layouts with kernels of their own, generated from the variant table:
//   nchw:    W stride 1 (any other strides: padded rows, gaps between channels)
//   nhwc:    C stride 1 (channels_last)
//   strided: anything else, and calls whose tensors differ in layout
using Layout = vocabulary::Layout;
// The layout every tensor of one call satisfies; size-1 dimensions match any stride.
// channels_last with fewer than 16 channels gets the strided kernels (halide_glue.cpp).
Layout common_layout(const std::vector<const Tensor *> &tensors);
const char *layout_name(Layout l);

// The Halide type of a tensor element as the kernels see it (bfloat16: its uint16 bits).
halide_type_t element_type(DType t);
// The type of per-channel values for a dtype: float64 for float64, else float32.
DType per_channel_dtype(DType t);
// Throws Error("<where>: unknown dtype N ...") for a DType or Device value outside its enum.
void check_enums(const char *where, DType dtype, Device device);

// The offsets in elements from data() of the lowest and highest element a view reaches (0, 0
// when empty). Throws Error when a size product or the span in bytes overflows int64.
struct ElementSpan {
    int64_t lo = 0, hi = 0;
};
ElementSpan element_span(const Tensor &t);
// One element of `dtype` in memory, as a float64 value (exact for every dtype), and back
// (rounded once to the dtype, with PyTorch's rounding for the 16-bit ones).
double load_element(const void *p, DType dtype);
void store_element(void *p, DType dtype, double v);
// Whether two of a view's elements share an address (a zero stride, or strides that interleave).
bool self_overlaps(const Tensor &t);
// Whether the memory spans of two tensors intersect (spans validated by element_span and
// compared in 128 bits: no wrap-around). On OpenCL only the same cl_mem is seen as overlap.
bool overlaps(const Tensor &a, const Tensor &b);

// ---- Halide glue (halide_glue.cpp) ----
// Installs the error handler and the CUDA context hooks once, and reads the environment
// (BN2D_MAX_CPU_ISA, BN2D_VERBOSE, ...).
void init_runtime();

// One call into Halide (a kernel, a copy, an allocation), passed as its user_context: the
// kernels are built with Halide's user_context feature, and Halide hands the pointer to the
// error handler, also from the worker threads of a parallel kernel, and to the CUDA context and
// stream hooks. So an error reaches the call that raised it, whatever thread reported it, and a
// call runs in the CUDA context and stream its thread chose (bn2d::use_cuda_context), with no
// process-wide state in between.
class HalideCall {
public:
    HalideCall();
    ~HalideCall();
    HalideCall(const HalideCall &) = delete;
    HalideCall &operator=(const HalideCall &) = delete;
    void *user_context() { return this; }
    // Throws Error("<what>: <Halide's message for this call>") if rc is a Halide error code.
    void check(int rc, const std::string &what);
    // The error handler's side: keeps the first message of this call.
    void record_error(const std::string &message);
    // The calling thread's CUDA context and stream when the call was made (null: Halide's own).
    void *cu_context = nullptr, *cu_stream = nullptr;
    // Run the kernel's parallel loops on the calling thread: for tiny calls, where waking the
    // thread pool costs more than the work (kSerialMaxElements in dispatch.cpp).
    bool serial = false;
    // Whether `user_context` is a live HalideCall (an application's pipelines may share this
    // Halide runtime and pass pointers of their own).
    static HalideCall *from(void *user_context);

private:
    std::mutex mutex_;
    std::string error_;
};
// Runs f(user_context) as one HalideCall and checks its result:
//   halide_call("copying to the device", [&](void *uc) { return b.copy_to_device(iface, uc); });
template<typename F>
void halide_call(const std::string &what, F &&f) {
    HalideCall call;
    call.check(f(call.user_context()), what);
}
// This thread's CUDA context and stream for calls it makes (bn2d::use_cuda_context).
void thread_cuda_context(void **cu_context, void **cu_stream);
// The Halide device interface of a device; nullptr for the CPU. Throws if not compiled in.
const halide_device_interface_t *device_interface(Device d);

// A non-owning Halide buffer over a 4-D [N, C, H, W] Tensor, dims (w, h, c, n); a device
// tensor's pointer is wrapped (and detached when the buffer goes). With `fuse`, dense
// dimensions are presented as one: for nchw a dense H x W plane is one row of H*W elements
// (h extent 1), for nhwc dense (N, H, W) are N*H*W rows of C values (h = n = 1), which the
// kernels loop over without row tails. The caller decides that every tensor of the call fuses
// (fusable()).
// Every extent and stride must fit Halide's 32-bit dimension fields (Error otherwise).
HalideBuffer tensor_buffer(const Tensor &t, Layout layout, bool fuse);
// Fused extents must fit 32 bits too: a tensor whose plane or row count does not, is not.
bool fusable(const Tensor &t, Layout layout);
// Whether kernels with 32-bit indexing cannot address the buffer: an extent x |stride|, the
// element count or the element span (highest minus lowest offset) reaches 2^31. Halide's
// 32-bit kernels check the first two; the span bounds every partial sum of their index
// arithmetic, mixed-sign strides included.
bool needs_large_buffers(const HalideBuffer &b);
// Why this build cannot run kernels on a GPU backend (BN2D_GPU, BN2D_GPU_BACKENDS); nullptr
// when it can.
const char *gpu_kernels_missing(Device d);
// The handle an application sees for a device allocation of ours: a CUdeviceptr, or a cl_mem
// (Halide's OpenCL buffers hold a wrapper struct in `device`, not the cl_mem itself).
uint64_t app_device_handle(HalideBuffer &b, Device d);
// Host <-> device copies of a whole buffer; no-ops on the CPU.
void sync_to_device(HalideBuffer &b, Device d, const char *what);
void sync_to_host(HalideBuffer &b, Device d, const char *what);

// ---- settings (settings.cpp) ----
// The best compiled ISA variant this CPU supports under the cap; records it as the last used.
CpuIsa select_cpu_isa();
void init_settings_from_environment();
void set_last_call_streamed(bool streamed);
void set_last_cpu_strategy(CpuStrategy strategy);  // last_cpu_strategy_used()

// ---- kernel dispatch (dispatch.cpp) ----
// Each picks the kernel of the variant table for the device (and, on the CPU, the ISA), runs
// it, and throws on error. `x` is the caller's input tensor, for BN2D_VERBOSE's line.
// Each picks the kernel for the device, the tensors' dtype and their layout (falling back to
// the strided kernel when the table has none for that layout).
struct Call {
    Device device;
    Layout layout;
    const Tensor &x;     // the caller's input tensor: dtype, and the shape BN2D_VERBOSE prints
    bool large = false;  // some buffer needs_large_buffers(): the 64-bit-indexing kernels
};
// The fused epilogue of a forward, y = relu(bn(x) + residual): `residual` null when none.
struct Epilogue {
    halide_buffer_t *residual = nullptr;
    bool relu = false;
};
// A forward's buffers. running_mean and running_var: the statistics an eval forward normalizes
// with (the running ones, or a merge's), and those a training forward updates.
struct ForwardBuffers {
    halide_buffer_t *x, *weight, *bias, *running_mean, *running_var, *y;
    Epilogue epilogue;
    double eps;
};
// What a training forward writes besides y: the batch statistics for backward and the updated
// running statistics (factor: exponential_average_factor).
struct TrainForwardOutputs {
    halide_buffer_t *saved_mean, *saved_invstd, *running_mean_out, *running_var_out;
    double factor;
};
void run_eval_forward(const Call &c, const ForwardBuffers &f);
// training: mean/stat = saved mean, saved invstd. eval: running_mean, running_var.
// grad_input null: not wanted. grad_weight/grad_bias are written as grad_*_in + this call's
// gradient when want_params; otherwise they may still be written (training backward computes
// the sums anyway), so they must be scratch the caller does not commit.
// relu_out: the forward's output when it ended in a ReLU (grad_out is masked by it), else null.
// grad_sums: (C, 2) float64 scratch, where a training backward without grad_input also writes
// its per-channel sums (SyncBatchNorm2d all-reduces them).
struct BackwardBuffers {
    halide_buffer_t *x, *grad_out, *relu_out, *mean, *stat, *weight;
    halide_buffer_t *grad_input;  // nullable
    halide_buffer_t *grad_weight_in, *grad_bias_in, *grad_weight, *grad_bias;
    halide_buffer_t *grad_sums;
};
void run_backward(const Call &c, bool training, bool want_params, double eps,
                  const BackwardBuffers &b);
// SyncBatchNorm2d (generators/variants.cmake: sync_*). partial: (C, 3) float64 {count, mean,
// M2}; gathered: (C, 3, processes); sums: (C, 2) float64 over `count` values per channel.
void run_sync_stats(const Call &c, halide_buffer_t *x, halide_buffer_t *partial);
// The split strategy's sums (bn2d::CpuStrategy::split; NCHW CPU calls): the same outputs as
// run_sync_stats and, for a training backward, as run_backward without grad_input (parameter
// gradients and b.grad_sums), summed in memory order.
void run_split_stats(const Call &c, halide_buffer_t *x, halide_buffer_t *partial);
void run_split_bwd_sums(const Call &c, double eps, const BackwardBuffers &b);
// Whether a training call runs the split strategy: the setting, else the machine file's
// thresholds on H*W (`residual`: a forward that adds one) and on the `bytes` the call moves;
// only where the split kernels exist (CPU, NCHW, 32-bit indexing).
bool split_strategy(const Call &c, bool backward, bool residual, int64_t bytes);
// The merge of every process's {count, mean, M2} (`gathered`, (C, 3, processes)) into a
// training forward's statistics (`t`: saved mean and invstd, updated running statistics) and
// the biased variance it normalizes with (`merged_var`). Per channel: `c.x` is a stand-in for
// the per-channel dtype (float32 or float64). `op`: the op BN2D_VERBOSE names (sync_fwd;
// train_fwd in the split strategy).
void run_sync_merge(const Call &c, const char *op, halide_buffer_t *gathered,
                    halide_buffer_t *running_mean, halide_buffer_t *running_var, double eps,
                    const TrainForwardOutputs &t, halide_buffer_t *merged_var);
void run_sync_grad_input(const Call &c, const char *op, const BackwardBuffers &b,
                         halide_buffer_t *sums, double count);
// ---- one op as the CPU strategy runs it: shared by BatchNorm2d and bn2d::functional ----
// The fused train_fwd kernel, or the split strategy's three (split_stats, sync_merge,
// eval_fwd). `partial` ((C, 3) float64) and `merged_var` (C) are the split's scratch, host
// buffers allocated here when empty.
void train_forward(const Call &c, const ForwardBuffers &f, const TrainForwardOutputs &t,
                   HalideBuffer &partial, HalideBuffer &merged_var);
// run_backward, or for a training call under the split strategy its sums (and parameter
// gradients) then grad_input from them. `per_channel`: N*H*W.
void backward(const Call &c, bool training, bool want_params, double eps, const BackwardBuffers &b,
              int64_t per_channel);

// The gradient of a fused forward's residual: grad_out through the ReLU (relu_out non-null),
// else grad_out itself. `ones`: C per-channel values of 1.
void run_grad_residual(const Call &c, halide_buffer_t *grad_out, halide_buffer_t *relu_out,
                       halide_buffer_t *ones, halide_buffer_t *grad_residual);

}  // namespace bn2d::detail
