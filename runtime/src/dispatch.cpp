// Kernel dispatch: the variant table (generated from generators/variants.cmake) gives one
// KernelSet per CPU ISA and GPU backend; each call picks the set for the device, the kernel for
// the op and output mask, runs it, and reports it under BN2D_VERBOSE.
#include <chrono>
#include <cstdio>

#include "bn2d_kernel_args.h"
#include "bn2d_kernel_table.h"
#include "internal.h"

namespace bn2d::detail {

const char *gpu_kernels_missing(Device d) {
    if (!BN2D_HAVE_GPU) return "built without GPU support (BN2D_GPU=OFF)";
    if (d == Device::Cuda && !kCudaKernelsBuilt)
        return "this build has no CUDA kernels (BN2D_GPU_BACKENDS leaves cuda out)";
    if (d == Device::OpenCL && !kOpenclKernelsBuilt)
        return "this build has no OpenCL kernels (BN2D_GPU_BACKENDS leaves opencl out)";
    return nullptr;
}

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
    if (const char *why = gpu_kernels_missing(d))
        throw Error(std::string(device_name(d)) + ": " + why);
    if (d == Device::Cuda) return {kCudaKernels, kCudaTarget};
    return {kOpenclKernels, kOpenclTarget};
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

// The bytes of `tensors` tensors the size of `out`: what a call moves, for the rules below.
int64_t bytes_moved(const halide_buffer_t &out, int tensors) {
    int64_t bytes = out.type.bytes();
    for (int d = 0; d < out.dimensions; ++d) bytes *= out.dim[d].extent;
    return bytes * tensors;
}

// Whether a call writes its tensor output `out` with streaming stores: on the CPU with 32-bit
// indexing, by the setting, when the output is line-aligned and (automatic) the `tensors`
// tensors of out's size the call moves do not fit the last-level cache.
bool stream(const Call &c, const halide_buffer_t *out, int tensors) {
    if (c.device != Device::CPU || c.large || !out || !out->host) return false;
    const StreamingStores mode = streaming_stores();
    if (mode == StreamingStores::never || !line_aligned(*out)) return false;
    if (mode == StreamingStores::always) return true;
    return bytes_moved(*out, tensors) > streaming_threshold_bytes();
}

// Runs the kernel of `args`' type (bn2d_kernel_args.h) from the selected set for the call's
// dtype and layout (the strided kernel when the table has none for the layout; its
// streaming-store build when `streamed` and one exists); with verbose mode on, times it (device
// calls are synchronized first) and prints one bn2d_verbose line (the kernel's name ends in _nt
// when it streamed). `op` is the module's op BN2D_VERBOSE and errors name.
template<typename Args>
void run(const Call &c, const char *op, const Args &args, bool streamed = false) {
    if (const char *missing = args.unset())  // a bug of ours, not the caller's: say which
        throw Error(std::string(op) + ": internal error: " + Args::kKernel + "'s argument '" +
                    missing + "' was not set");
    const Selected s = select(c.device, c.large);
    const int dt = static_cast<int>(c.x.dtype());
    Layout layout = c.layout;
    auto kernel = [&](const KernelSet &set) {
        return (set.*Args::kKernels)[dt][static_cast<int>(layout)];
    };
    decltype(kernel(s.kernels)) fn = nullptr;
    if (streamed && s.streaming) fn = kernel(*s.streaming);
    streamed = fn != nullptr;
    if (!fn) fn = kernel(s.kernels);
    if (!fn) {
        layout = Layout::strided;
        fn = kernel(s.kernels);
    }
    if (!fn)
        throw Error(std::string(op) + ": no " + Args::kKernel + " kernel for " +
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
        check(args.invoke(fn, call.user_context()));
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    int rc = args.invoke(fn, call.user_context());
    if (rc == 0 && c.device != Device::CPU)
        rc = halide_device_sync_global(call.user_context(), device_interface(c.device));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const Tensor &x = c.x;
    std::fprintf(
        stderr, "bn2d_verbose,exec,%s,%s_%s_%s%s%s,%s:%s,%lldx%lldx%lldx%lld,%s,%s,%.4f%s\n", op,
        Args::kKernel, dtype_short_name(x.dtype()), layout_name(layout), c.large ? "_large" : "",
        streamed ? "_nt" : "", device_name(c.device), s.isa, (long long)x.size(0),
        (long long)x.size(1), (long long)x.size(2), (long long)x.size(3), layout_name(layout),
        dtype_short_name(x.dtype()), ms, rc == 0 ? "" : ",failed");
    check(rc);
}

// The arguments train_fwd and eval_fwd share. The fused epilogue y = relu(bn(x) + residual):
// kernels take a residual whether or not they add it; without one, they are given x, whose
// cache lines they read anyway (bn2d::Epilogue in generators/bn2d_algorithm.h).
template<typename Args>
Args forward_args(const ForwardBuffers &f) {
    Args a;
    a.x = f.x;
    a.add_residual = f.epilogue.residual != nullptr;
    a.residual = a.add_residual ? f.epilogue.residual : f.x;
    a.relu = f.epilogue.relu;
    a.weight = f.weight;
    a.bias = f.bias;
    a.running_mean = f.running_mean;
    a.running_var = f.running_var;
    a.eps = f.eps;
    a.y = f.y;
    return a;
}

// The inputs every backward kernel shares. Without a ReLU, the forward's output `y` is not read:
// the kernel is given grad_out, whose cache lines it reads anyway (bn2d::ReluGrad).
template<typename Args>
Args backward_args(const BackwardBuffers &b, double eps) {
    Args a;
    a.x = b.x;
    a.grad_out = b.grad_out;
    a.relu = b.relu_out != nullptr;
    a.y = a.relu ? b.relu_out : b.grad_out;
    a.mean = b.mean;
    a.stat = b.stat;
    a.eps = eps;
    a.weight = b.weight;
    return a;
}

// The accumulated parameter gradients in and out, for the kernels that write them.
template<typename Args>
Args &with_param_grads(Args &a, const BackwardBuffers &b) {
    a.grad_weight_in = b.grad_weight_in;
    a.grad_bias_in = b.grad_bias_in;
    a.grad_weight = b.grad_weight;
    a.grad_bias = b.grad_bias;
    return a;
}

// The tensors of x's size a call moves: a forward x and y, and the residual when one is added;
// a backward x, grad_out and grad_input, and the forward's output when the ReLU masks grad_out.
int forward_tensors(const ForwardBuffers &f) { return f.epilogue.residual ? 3 : 2; }
int backward_tensors(const BackwardBuffers &b) { return b.relu_out ? 4 : 3; }

// Whether a forward streams y; a backward grad_input.
bool stream_forward(const Call &c, const ForwardBuffers &f) {
    return stream(c, f.y, forward_tensors(f));
}

bool stream_backward(const Call &c, const BackwardBuffers &b) {
    return stream(c, b.grad_input, backward_tensors(b));
}

}  // namespace

void run_eval_forward(const Call &c, const ForwardBuffers &f) {
    run(c, "eval_fwd", forward_args<EvalFwdArgs>(f), stream_forward(c, f));
}

void run_backward(const Call &c, bool training, bool want_params, double eps,
                  const BackwardBuffers &b) {
    const char *op = training ? "train_bwd" : "eval_bwd";
    if (want_params && !b.grad_input) {
        if (training) {
            auto a = backward_args<TrainBwdParamsArgs>(b, eps);
            with_param_grads(a, b).local_sums = b.grad_sums;
            run(c, op, a);
        } else {
            auto a = backward_args<EvalBwdParamsArgs>(b, eps);
            run(c, op, with_param_grads(a, b));
        }
        return;
    }
    const bool streamed = stream_backward(c, b);
    if (!want_params && !training) {
        auto a = backward_args<EvalBwdInputArgs>(b, eps);
        a.grad_input = b.grad_input;
        run(c, op, a, streamed);
    } else if (training) {
        // Also grad_input alone: the sums are needed anyway, the 2*C gradients go to scratch.
        auto a = backward_args<TrainBwdArgs>(b, eps);
        with_param_grads(a, b).grad_input = b.grad_input;
        run(c, op, a, streamed);
    } else {
        auto a = backward_args<EvalBwdArgs>(b, eps);
        with_param_grads(a, b).grad_input = b.grad_input;
        run(c, op, a, streamed);
    }
}

void run_sync_stats(const Call &c, halide_buffer_t *x, halide_buffer_t *partial) {
    SyncStatsArgs a;
    a.x = x;
    a.partial = partial;
    run(c, "sync_fwd", a);
}

void run_split_stats(const Call &c, halide_buffer_t *x, halide_buffer_t *partial) {
    SplitStatsArgs a;
    a.x = x;
    a.partial = partial;
    run(c, "train_fwd", a);
}

void run_split_bwd_sums(const Call &c, double eps, const BackwardBuffers &b) {
    auto a = backward_args<SplitBwdSumsArgs>(b, eps);
    with_param_grads(a, b).local_sums = b.grad_sums;
    run(c, "train_bwd", a);
}

// The split kernels run their channel groups in parallel, nothing finer: with fewer channels
// than this, automatic leaves the call to the fused kernels, which also split inside channels.
constexpr int64_t kSplitMinChannels = 16;

bool split_strategy(const Call &c, bool backward, bool residual, int64_t bytes) {
    if (c.device != Device::CPU || c.large || c.layout != Layout::nchw) return false;
    bool split = false;
    switch (cpu_strategy()) {
    case CpuStrategy::fused: break;
    case CpuStrategy::split: split = true; break;
    case CpuStrategy::automatic:
        split = c.x.size(1) >= kSplitMinChannels &&
                (c.x.size(2) * c.x.size(3) <= split_max_plane(backward, residual) ||
                 bytes <= split_max_cache_bytes(backward));
    }
    set_last_cpu_strategy(split ? CpuStrategy::split : CpuStrategy::fused);
    return split;
}

void run_sync_merge(const Call &c, const char *op, halide_buffer_t *gathered,
                    halide_buffer_t *running_mean, halide_buffer_t *running_var, double eps,
                    const TrainForwardOutputs &t, halide_buffer_t *merged_var) {
    SyncMergeArgs a;
    a.gathered = gathered;
    a.running_mean = running_mean;
    a.running_var = running_var;
    a.eps = eps;
    a.factor = t.factor;
    a.mean = t.saved_mean;
    a.var = merged_var;
    a.saved_invstd = t.saved_invstd;
    a.running_mean_out = t.running_mean_out;
    a.running_var_out = t.running_var_out;
    run(c, op, a);
}

void run_sync_grad_input(const Call &c, const char *op, const BackwardBuffers &b,
                         halide_buffer_t *sums, double count) {
    auto a = backward_args<SyncBwdInputArgs>(b, 0.0);  // training: eps is in the saved invstd
    a.sums = sums;
    a.count = count;
    a.grad_input = b.grad_input;
    run(c, op, a, stream_backward(c, b));
}

// The eval grad_input kernel with a unit scale: dz = dy * (1 / sqrt(1 + 0)) * 1, exactly dy
// (masked by the ReLU when relu_out is given), in one pass that reads dy (and y) and writes dz.
// No library of its own: the variant table stays as it is.
void run_grad_residual(const Call &c, halide_buffer_t *grad_out, halide_buffer_t *relu_out,
                       halide_buffer_t *ones, halide_buffer_t *grad_residual) {
    BackwardBuffers unit{};
    unit.x = grad_out;  // x - mean is not used: the kernel's grad_input is dy * scale
    unit.grad_out = grad_out;
    unit.relu_out = relu_out;
    unit.mean = unit.stat = unit.weight = ones;  // scale = weight / sqrt(var + eps) = 1
    auto a = backward_args<EvalBwdInputArgs>(unit, 0.0);
    a.grad_input = grad_residual;
    run(c, "grad_residual", a);
}

void train_forward(const Call &c, const ForwardBuffers &f, const TrainForwardOutputs &t,
                   HalideBuffer &partial, HalideBuffer &merged_var) {
    const int64_t bytes = bytes_moved(*f.x, forward_tensors(f));
    if (!split_strategy(c, false, f.epilogue.residual != nullptr, bytes)) {
        auto a = forward_args<TrainFwdArgs>(f);
        a.factor = t.factor;
        a.saved_mean = t.saved_mean;
        a.saved_invstd = t.saved_invstd;
        a.running_mean_out = t.running_mean_out;
        a.running_var_out = t.running_var_out;
        run(c, "train_fwd", a, stream_forward(c, f));
        return;
    }
    // SyncBatchNorm2d's forward for a group of one: this batch's {count, mean, M2}, their merge
    // (saved and running statistics), and eval forward's normalization with them.
    const int C = static_cast<int>(c.x.size(1));
    const DType per_channel = per_channel_dtype(c.x.dtype());
    if (!partial.data()) partial = HalideBuffer(halide_type_t(halide_type_float, 64), C, 3);
    if (!merged_var.data()) merged_var = HalideBuffer(element_type(per_channel), C);
    run_split_stats(c, f.x, partial);
    HalideBuffer one_process = partial.embedded(2);  // (C, 3, 1): the merge's gathered input
    const Tensor per_channel_type(nullptr, per_channel, {1, C, 1, 1});
    run_sync_merge({c.device, Layout::nchw, per_channel_type}, "train_fwd", one_process,
                   f.running_mean, f.running_var, f.eps, t, merged_var);
    ForwardBuffers normalize = f;
    normalize.running_mean = t.saved_mean;
    normalize.running_var = merged_var;
    run_eval_forward(c, normalize);
}

void backward(const Call &c, bool training, bool want_params, double eps, const BackwardBuffers &b,
              int64_t per_channel) {
    if (!training || !split_strategy(c, true, false, bytes_moved(*b.x, backward_tensors(b)))) {
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
