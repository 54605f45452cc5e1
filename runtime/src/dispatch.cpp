// Kernel dispatch: the variant table (generated from generators/variants.cmake) gives one
// KernelSet per CPU ISA and GPU backend; each call picks the set for the device, the kernel for
// the op and output mask, runs it, and reports it under BN2D_VERBOSE.
#include <chrono>
#include <cstdio>

#include "bn2d_kernel_table.h"
#include "internal.h"

namespace bn2d::detail {
namespace {

// CPU calls on tensors of at most this many elements run on the calling thread: one pass over
// them costs about what waking the thread pool does (bench/results/python_*: the per-call
// overhead).
constexpr int64_t kSerialMaxElements = 16384;

// CPU: one single-target library per kernel and ISA (cmake/Bn2dKernels.cmake); the ISA is
// chosen per call by select_cpu_isa() (Halide's feature check under the cap), so the cap holds
// and BN2D_VERBOSE can say what ran. (A multitarget wrapper decides once per process.)
struct Selected {
    const KernelSet &kernels;
    const char *isa;                       // "avx512", ..., or the GPU backend's name
    const KernelSet *streaming = nullptr;  // the ISA's streaming-store kernels (CPU, 32-bit)
};

// large: the call's tensors need 64-bit indexing. The CPU runs the large_buffers kernels of
// the best ISA that has them at or below the selected one; GPU kernels index in 32 bits.
Selected select(Device d, bool large) {
    if (d == Device::CPU) {
        int isa = static_cast<int>(select_cpu_isa());
        if (!large) return {kCpuIsas[isa].kernels, kCpuIsas[isa].name, &kCpuIsas[isa].streaming};
        constexpr int kIsaCount = sizeof(kCpuIsas) / sizeof(kCpuIsas[0]);
        while (isa < kIsaCount - 1 && !kCpuIsas[isa].has_large) ++isa;
        if (!kCpuIsas[isa].has_large)
            throw Error("tensor too large for 32-bit indexing (2^31 elements, or an element span "
                        "that large) and this build has no large_buffers kernels "
                        "(LARGE_BUFFERS in generators/variants.cmake)");
        return {kCpuIsas[isa].large, kCpuIsas[isa].name};
    }
    if (large)
        throw Error(std::string(device_name(d)) +
                    ": tensor too large for the GPU kernels' 32-bit indexing (2^31 elements, or "
                    "an element span or extent x stride that large); the CPU runs such tensors");
#if BN2D_HAVE_GPU
    if (d == Device::Cuda) return {kCudaKernels, kCudaTarget};
    if (d == Device::OpenCL) return {kOpenclKernels, kOpenclTarget};
#endif
    throw Error(std::string(device_name(d)) + ": built without GPU support (BN2D_GPU=OFF)");
}

// Whether every full vector a streaming kernel stores to `out` starts on a 64-byte line: the
// generator's check (require_line_aligned in generators/bn2d_generators.cpp), made here first
// so that such calls take the ordinary kernel instead of an error.
bool line_aligned(const halide_buffer_t &out) {
    const int per_line = 64 / out.type.bytes();
    if (reinterpret_cast<uintptr_t>(out.host) % 64 != 0) return false;
    for (int d = 0; d < out.dimensions; ++d) {
        const halide_dimension_t &dim = out.dim[d];
        if (dim.extent == 1 || dim.stride % per_line == 0) continue;
        if (dim.stride == 1 && dim.extent % per_line == 0) continue;
        return false;
    }
    return true;
}

// Whether a call writes its tensor output `out` with streaming stores: on the CPU with 32-bit
// indexing, by the setting, when the output is line-aligned and (automatic) the `tensors`
// tensors of out's size the call moves do not fit the last-level cache.
bool stream(const Call &c, const halide_buffer_t *out, int tensors) {
    if (c.device != Device::CPU || c.large || !out || !out->host) return false;
    const StreamingStores mode = streaming_stores();
    if (mode == StreamingStores::never || !line_aligned(*out)) return false;
    if (mode == StreamingStores::always) return true;
    int64_t bytes = out->type.bytes();
    for (int d = 0; d < out->dimensions; ++d) bytes *= out->dim[d].extent;
    return bytes * tensors > streaming_threshold_bytes();
}

// Runs kernel `k` of the selected set for the call's dtype and layout (the strided kernel when
// the table has none for the layout; its streaming-store build when `streamed` and one exists);
// with verbose mode on, times it (device calls are synchronized first) and prints one
// bn2d_verbose line (the kernel's name ends in _nt when it streamed).
template<typename Kernel, typename... Args>
void call_with(const Call &c, bool streamed, const char *op,
               Kernel (KernelSet::*k)[kDtypeCount][kLayoutCount], const char *kernel_name,
               Args... args) {
    const Selected s = select(c.device, c.large);
    const int dt = static_cast<int>(c.x.dtype());
    Layout layout = c.layout;
    Kernel fn = nullptr;
    if (streamed && s.streaming) fn = (s.streaming->*k)[dt][static_cast<int>(layout)];
    streamed = fn != nullptr;
    if (!fn) fn = (s.kernels.*k)[dt][static_cast<int>(layout)];
    if (!fn) {
        layout = Layout::strided;
        fn = (s.kernels.*k)[dt][static_cast<int>(layout)];
    }
    if (!fn)
        throw Error(std::string(op) + ": no " + kernel_name + " kernel for " +
                    dtype_name(c.x.dtype()) + " " + layout_name(c.layout) +
                    " tensors in this build (generators/variants.cmake)");
    if (c.device == Device::CPU) set_last_call_streamed(streamed);
    HalideCall call;  // the kernel's user_context: its error message, its CUDA stream
    call.serial = c.device == Device::CPU && c.x.numel() <= kSerialMaxElements;
    auto check = [&](int rc) {
        if (rc == 0) return;
        std::string what = std::string(op) + " (" + device_name(c.device) + ")";
        if (c.device == Device::OpenCL && c.x.dtype() == DType::float16)
            what += ": float16 kernels need the OpenCL device's cl_khr_fp16 extension";
        call.check(rc, what);
    };
    if (!verbose()) {
        check(fn(call.user_context(), args...));
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    int rc = fn(call.user_context(), args...);
    if (rc == 0 && c.device != Device::CPU)
        rc = halide_device_sync_global(call.user_context(), device_interface(c.device));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const Tensor &x = c.x;
    std::fprintf(
        stderr, "bn2d_verbose,exec,%s,%s_%s_%s%s%s,%s:%s,%lldx%lldx%lldx%lld,%s,%s,%.4f%s\n", op,
        kernel_name, dtype_short_name(x.dtype()), layout_name(layout), c.large ? "_large" : "",
        streamed ? "_nt" : "", device_name(c.device), s.isa, (long long)x.size(0),
        (long long)x.size(1), (long long)x.size(2), (long long)x.size(3), layout_name(layout),
        dtype_short_name(x.dtype()), ms, rc == 0 ? "" : ",failed");
    check(rc);
}

template<typename Kernel, typename... Args>
void call(const Call &c, const char *op, Kernel (KernelSet::*k)[kDtypeCount][kLayoutCount],
          const char *kernel_name, Args... args) {
    call_with(c, false, op, k, kernel_name, args...);
}

#define BN2D_KERNEL(name) &KernelSet::name, #name

}  // namespace

// Kernels take the epilogue's residual and the ReLU's output whether or not they are used:
// unused, they are given x and grad_out, whose cache lines the kernel reads anyway
// (bn2d::Epilogue, bn2d::ReluGrad in generators/bn2d_algorithm.h).
void run_train_forward(const Call &c, halide_buffer_t *x_buf, const Epilogue &epilogue,
                       halide_buffer_t *weight, halide_buffer_t *bias,
                       halide_buffer_t *running_mean, halide_buffer_t *running_var, double eps,
                       double factor, halide_buffer_t *y, halide_buffer_t *saved_mean,
                       halide_buffer_t *saved_invstd, halide_buffer_t *running_mean_out,
                       halide_buffer_t *running_var_out) {
    halide_buffer_t *z = epilogue.residual ? epilogue.residual : x_buf;
    const bool add = epilogue.residual != nullptr;
    call_with(c, stream(c, y, add ? 3 : 2), "train_fwd", BN2D_KERNEL(train_fwd), x_buf, z, weight,
              bias, running_mean, running_var, eps, add, epilogue.relu, factor, y, saved_mean,
              saved_invstd, running_mean_out, running_var_out);
}

void run_eval_forward(const Call &c, halide_buffer_t *x_buf, const Epilogue &epilogue,
                      halide_buffer_t *weight, halide_buffer_t *bias, halide_buffer_t *running_mean,
                      halide_buffer_t *running_var, double eps, halide_buffer_t *y) {
    halide_buffer_t *z = epilogue.residual ? epilogue.residual : x_buf;
    const bool add = epilogue.residual != nullptr;
    call_with(c, stream(c, y, add ? 3 : 2), "eval_fwd", BN2D_KERNEL(eval_fwd), x_buf, z, weight,
              bias, running_mean, running_var, eps, add, epilogue.relu, y);
}

void run_backward(const Call &c, bool training, bool want_params, double eps,
                  const BackwardBuffers &b) {
    const char *op = training ? "train_bwd" : "eval_bwd";
    const bool relu = b.relu_out != nullptr;
    halide_buffer_t *y = relu ? b.relu_out : b.grad_out;
    if (want_params && !b.grad_input) {
        if (training)
            call(c, op, BN2D_KERNEL(train_bwd_params), b.x, b.grad_out, y, b.mean, b.stat, eps,
                 relu, b.weight, b.grad_weight_in, b.grad_bias_in, b.grad_weight, b.grad_bias,
                 b.grad_sums);
        else
            call(c, op, BN2D_KERNEL(eval_bwd_params), b.x, b.grad_out, y, b.mean, b.stat, eps, relu,
                 b.weight, b.grad_weight_in, b.grad_bias_in, b.grad_weight, b.grad_bias);
        return;
    }
    // x, grad_out and grad_input, and the forward's output when the ReLU masks grad_out.
    const bool streamed = stream(c, b.grad_input, relu ? 4 : 3);
    if (!want_params && !training) {
        call_with(c, streamed, op, BN2D_KERNEL(eval_bwd_input), b.x, b.grad_out, y, b.mean, b.stat,
                  eps, relu, b.weight, b.grad_input);
    } else if (training) {
        // Also grad_input alone: the sums are needed anyway, the 2*C gradients go to scratch.
        call_with(c, streamed, op, BN2D_KERNEL(train_bwd), b.x, b.grad_out, y, b.mean, b.stat, eps,
                  relu, b.weight, b.grad_weight_in, b.grad_bias_in, b.grad_input, b.grad_weight,
                  b.grad_bias);
    } else {
        call_with(c, streamed, op, BN2D_KERNEL(eval_bwd), b.x, b.grad_out, y, b.mean, b.stat, eps,
                  relu, b.weight, b.grad_weight_in, b.grad_bias_in, b.grad_input, b.grad_weight,
                  b.grad_bias);
    }
}

void run_sync_stats(const Call &c, halide_buffer_t *x, halide_buffer_t *partial) {
    call(c, "sync_fwd", BN2D_KERNEL(sync_stats), x, partial);
}

void run_split_stats(const Call &c, halide_buffer_t *x, halide_buffer_t *partial) {
    call(c, "train_fwd", BN2D_KERNEL(split_stats), x, partial);
}

void run_split_bwd_sums(const Call &c, double eps, const BackwardBuffers &b) {
    const bool relu = b.relu_out != nullptr;
    call(c, "train_bwd", BN2D_KERNEL(split_bwd_sums), b.x, b.grad_out,
         relu ? b.relu_out : b.grad_out, b.mean, b.stat, eps, relu, b.weight, b.grad_weight_in,
         b.grad_bias_in, b.grad_weight, b.grad_bias, b.grad_sums);
}

// The split kernels run their channel groups in parallel, nothing finer: with fewer channels
// than this, automatic leaves the call to the fused kernels, which also split inside channels.
constexpr int64_t kSplitMinChannels = 16;

bool split_strategy(const Call &c, bool backward) {
    if (c.device != Device::CPU || c.large || c.layout != Layout::nchw) return false;
    switch (cpu_strategy()) {
    case CpuStrategy::fused: return false;
    case CpuStrategy::split: return true;
    case CpuStrategy::automatic: break;
    }
    return c.x.size(1) >= kSplitMinChannels &&
           c.x.size(2) * c.x.size(3) <= split_max_plane(backward);
}

void run_sync_merge(const Call &c, const char *op, halide_buffer_t *gathered,
                    halide_buffer_t *running_mean, halide_buffer_t *running_var, double eps,
                    double factor, halide_buffer_t *mean, halide_buffer_t *var,
                    halide_buffer_t *saved_invstd, halide_buffer_t *running_mean_out,
                    halide_buffer_t *running_var_out) {
    call(c, op, BN2D_KERNEL(sync_merge), gathered, running_mean, running_var, eps, factor, mean,
         var, saved_invstd, running_mean_out, running_var_out);
}

void run_sync_grad_input(const Call &c, const char *op, const BackwardBuffers &b,
                         halide_buffer_t *sums, double count) {
    const bool relu = b.relu_out != nullptr;
    call_with(c, stream(c, b.grad_input, relu ? 4 : 3), op, BN2D_KERNEL(sync_bwd_input), b.x,
              b.grad_out, relu ? b.relu_out : b.grad_out, b.mean, b.stat, 0.0, relu, b.weight, sums,
              count, b.grad_input);
}

// The eval grad_input kernel with a unit scale: dz = dy * (1 / sqrt(1 + 0)) * 1, exactly dy
// (masked by the ReLU when relu_out is given), in one pass that reads dy (and y) and writes dz.
// No library of its own: the variant table stays as it is.
void run_grad_residual(const Call &c, halide_buffer_t *grad_out, halide_buffer_t *relu_out,
                       halide_buffer_t *ones, halide_buffer_t *grad_residual) {
    const bool relu = relu_out != nullptr;
    call(c, "grad_residual", BN2D_KERNEL(eval_bwd_input), grad_out, grad_out,
         relu ? relu_out : grad_out, ones, ones, 0.0, relu, ones, grad_residual);
}

void train_forward(const Call &c, halide_buffer_t *x, const Epilogue &epilogue,
                   const TrainForwardBuffers &b, double eps, double factor, halide_buffer_t *y,
                   HalideBuffer &partial, HalideBuffer &merged_var) {
    if (!split_strategy(c, false)) {
        run_train_forward(c, x, epilogue, b.weight, b.bias, b.running_mean, b.running_var, eps,
                          factor, y, b.saved_mean, b.saved_invstd, b.running_mean_out,
                          b.running_var_out);
        return;
    }
    // SyncBatchNorm2d's forward for a group of one: this batch's {count, mean, M2}, their merge
    // (saved and running statistics), and eval forward's normalization with them.
    const int C = static_cast<int>(c.x.size(1));
    const DType per_channel = per_channel_dtype(c.x.dtype());
    if (!partial.data()) partial = HalideBuffer(halide_type_t(halide_type_float, 64), C, 3);
    if (!merged_var.data()) merged_var = HalideBuffer(element_type(per_channel), C);
    run_split_stats(c, x, partial);
    HalideBuffer one_process = partial.embedded(2);  // (C, 3, 1): the merge's gathered input
    const Tensor per_channel_type(nullptr, per_channel, {1, C, 1, 1});
    run_sync_merge({c.device, Layout::nchw, per_channel_type}, "train_fwd", one_process,
                   b.running_mean, b.running_var, eps, factor, b.saved_mean, merged_var,
                   b.saved_invstd, b.running_mean_out, b.running_var_out);
    run_eval_forward(c, x, epilogue, b.weight, b.bias, b.saved_mean, merged_var, eps, y);
}

void backward(const Call &c, bool training, bool want_params, double eps, const BackwardBuffers &b,
              int64_t per_channel) {
    if (!training || !split_strategy(c, true)) {
        run_backward(c, training, want_params, eps, b);
        return;
    }
    BackwardBuffers sums = b;
    sums.grad_input = nullptr;
    run_split_bwd_sums(c, eps, sums);
    if (b.grad_input)
        run_sync_grad_input(c, "train_bwd", b, b.grad_sums, static_cast<double>(per_channel));
}

}  // namespace bn2d::detail
