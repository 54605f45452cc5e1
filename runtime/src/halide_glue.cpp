// Halide glue: the error handler, device interfaces, and Halide buffers over Tensors.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <unordered_set>

#include "HalideRuntimeCuda.h"
#include "HalideRuntimeOpenCL.h"
#include "internal.h"

namespace bn2d::detail {
namespace {

// Halide's default handler aborts the process. Ours hands the message to the HalideCall whose
// user_context came with it (from whichever thread reported it). Halide calls made without one
// return no code anybody could check (a buffer's destructor freeing device memory), and an
// application's own pipelines sharing this runtime pass user_contexts of their own: their
// messages go to stderr.

// The live HalideCalls: the handler checks a user_context is one of ours before using it.
std::mutex g_calls_mutex;
std::unordered_set<const void *> g_calls;

std::string trimmed(const char *msg) {
    std::string m = msg ? msg : "";
    while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
    return m;
}

void capture_error(void *user_context, const char *msg) {
    if (HalideCall *call = HalideCall::from(user_context))
        call->record_error(trimmed(msg));
    else
        std::fprintf(stderr, "bn2d: Halide error outside a bn2d call: %s\n", trimmed(msg).c_str());
}

// Parallel loops: a serial call's tasks run in order on the calling thread; every other loop
// goes to the thread pool (Halide's, or the one an application installed before us).
halide_do_par_for_t g_pool_do_par_for = nullptr;

int do_par_for(void *user_context, halide_task_t task, int min, int size, uint8_t *closure) {
    const HalideCall *call = HalideCall::from(user_context);
    if (!call || !call->serial) return g_pool_do_par_for(user_context, task, min, size, closure);
    for (int i = min; i < min + size; ++i)
        if (int rc = halide_do_task(user_context, task, i, closure)) return rc;
    return 0;
}

#if BN2D_HAVE_GPU
// CUDA: each call runs in the context and stream its thread chose (use_cuda_context), else in
// Halide's own (the defaults, kept when the hooks are installed).
halide_cuda_acquire_context_t g_default_acquire = nullptr;
halide_cuda_release_context_t g_default_release = nullptr;
halide_cuda_get_stream_t g_default_stream = nullptr;

void app_cuda_context(void *user_context, void **cu_context, void **cu_stream) {
    if (const HalideCall *call = HalideCall::from(user_context)) {
        *cu_context = call->cu_context;
        *cu_stream = call->cu_stream;
    } else {
        thread_cuda_context(cu_context, cu_stream);
    }
}
int acquire_context(void *user_context, void **ctx, bool create) {
    void *app_ctx, *app_stream;
    app_cuda_context(user_context, &app_ctx, &app_stream);
    if (!app_ctx) return g_default_acquire(user_context, ctx, create);
    *ctx = app_ctx;
    return 0;
}
int release_context(void *user_context) {
    void *app_ctx, *app_stream;
    app_cuda_context(user_context, &app_ctx, &app_stream);
    return app_ctx ? 0 : g_default_release(user_context);
}
int get_stream(void *user_context, void *ctx, void **stream) {
    void *app_ctx, *app_stream;
    app_cuda_context(user_context, &app_ctx, &app_stream);
    if (!app_ctx) return g_default_stream(user_context, ctx, stream);
    *stream = app_stream;
    return 0;
}
void install_cuda_hooks() {
    g_default_acquire = halide_set_cuda_acquire_context(acquire_context);
    g_default_release = halide_set_cuda_release_context(release_context);
    g_default_stream = halide_set_cuda_get_stream(get_stream);
}
#endif

// Halide buffers hold extents and strides in 32 bits, with large_buffers kernels too: a
// tensor whose single dimension reaches 2^31 (a stride of 2^31 elements: one image or plane
// of 8 GiB of float32) cannot be described to a kernel.
int32_t to_i32(int64_t v, const char *what) {
    if (v > INT32_MAX || v < INT32_MIN)
        throw Error(std::string("tensor too large: ") + what + " " + std::to_string(v) +
                    " does not fit a Halide buffer's 32-bit extents and strides");
    return static_cast<int32_t>(v);
}

}  // namespace

void init_runtime() {
    static std::once_flag once;
    std::call_once(once, [] {
        halide_set_error_handler(capture_error);
        g_pool_do_par_for = halide_set_custom_do_par_for(do_par_for);
#if BN2D_HAVE_GPU
        install_cuda_hooks();
#endif
        init_settings_from_environment();
    });
}

HalideCall::HalideCall() {
    init_runtime();
    thread_cuda_context(&cu_context, &cu_stream);
    std::lock_guard<std::mutex> lock(g_calls_mutex);
    g_calls.insert(this);
}

HalideCall::~HalideCall() {
    std::lock_guard<std::mutex> lock(g_calls_mutex);
    g_calls.erase(this);
}

HalideCall *HalideCall::from(void *user_context) {
    if (!user_context) return nullptr;
    std::lock_guard<std::mutex> lock(g_calls_mutex);
    return g_calls.count(user_context) ? static_cast<HalideCall *>(user_context) : nullptr;
}

void HalideCall::record_error(const std::string &message) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_.empty()) error_ = message;
}

void HalideCall::check(int rc, const std::string &what) {
    if (rc == 0) return;
    std::string msg;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        msg = error_;
    }
    if (msg.empty()) msg = "Halide error code " + std::to_string(rc);
    throw Error(what + ": " + msg);
}

const halide_device_interface_t *device_interface(Device d) {
    switch (d) {
    case Device::CPU: return nullptr;
#if BN2D_HAVE_GPU
    case Device::Cuda: return halide_cuda_device_interface();
    case Device::OpenCL: return halide_opencl_device_interface();
#else
    default:
        throw Error(std::string(device_name(d)) + ": built without GPU support (BN2D_GPU=OFF)");
#endif
    }
    return nullptr;
}

const char *layout_name(Layout l) {
    const int i = static_cast<int>(l);
    return i >= 0 && i < vocabulary::kLayoutCount ? vocabulary::kLayouts[i] : "?";
}

halide_type_t element_type(DType t) {
    switch (t) {
    case DType::float32: return halide_type_of<float>();
    case DType::bfloat16: return halide_type_t(halide_type_uint, 16);
    case DType::float16: return halide_type_t(halide_type_float, 16);
    case DType::float64: return halide_type_of<double>();
    }
    return halide_type_of<float>();
}

DType per_channel_dtype(DType t) { return t == DType::float64 ? DType::float64 : DType::float32; }

namespace {
// Dimension i of [N, C, H, W] has unit stride, or is of size 1 (its stride is meaningless:
// PyTorch's x[..., ::8] of a W = 8 tensor has W = 1, stride 8).
bool unit_stride(const Tensor &t, int i) { return t.size(i) <= 1 || t.stride(i) == 1; }
}  // namespace

// channels_last tensors with fewer channels than this (images: C = 3) run the strided kernels:
// vectors along W (loads with stride C) beat vectors of 3 channels in 16 lanes. Measured on
// 1x3x1080x1920, 2 cores: training forward 24.9 -> 5.4 ms, eval 12 -> 2.5 ms (oneDNN NHWC:
// 30.6 and 19.4 ms).
constexpr int64_t kMinNhwcChannels = 16;

Layout common_layout(const std::vector<const Tensor *> &tensors) {
    auto all = [&](auto pred) {
        for (const Tensor *t : tensors)
            if (!pred(*t)) return false;
        return true;
    };
    // NCHW first when both hold (C = 1, or W = 1 with C stride 1), as PyTorch's
    // suggest_memory_format prefers contiguous.
    if (all([](const Tensor &t) { return unit_stride(t, 3); })) return Layout::nchw;
    if (all([](const Tensor &t) { return unit_stride(t, 1); }) &&
        tensors.front()->size(1) >= kMinNhwcChannels)
        return Layout::nhwc;
    return Layout::strided;
}

bool fusable(const Tensor &t, Layout layout) {
    switch (layout) {
    case Layout::nchw:  // the H x W plane is H*W consecutive elements
        return unit_stride(t, 3) && (t.size(2) <= 1 || t.stride(2) == t.size(3)) &&
               t.size(2) * t.size(3) <= INT32_MAX;
    case Layout::nhwc:
        return unit_stride(t, 1) && t.size(0) * t.size(2) * t.size(3) <= INT32_MAX &&
               (t.size(3) <= 1 || t.stride(3) == t.size(1)) &&
               (t.size(2) <= 1 || t.stride(2) == t.size(3) * t.size(1)) &&
               (t.size(0) <= 1 || t.stride(0) == t.size(2) * t.size(3) * t.size(1));
    case Layout::strided: return false;
    }
    return false;
}

HalideBuffer tensor_buffer(const Tensor &t, Layout layout, bool fuse) {
    const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
    // Strides of size-1 dimensions are set to what the layout's kernels require.
    auto stride = [&](int i, int64_t required) {
        return t.size(i) <= 1 ? static_cast<int32_t>(required) : to_i32(t.stride(i), "stride");
    };
    halide_dimension_t dims[4];
    if (fuse && layout == Layout::nchw) {
        dims[0] = {0, to_i32(H * W, "H*W"), 1, 0};
        dims[1] = {0, 1, to_i32(H * W, "H*W"), 0};
        dims[2] = {0, to_i32(C, "C"), stride(1, H * W), 0};
        dims[3] = {0, to_i32(N, "N"), stride(0, C * H * W), 0};
    } else if (fuse && layout == Layout::nhwc) {
        // The strides of the extent-1 dimensions are never multiplied by a coordinate.
        const int32_t past_end = static_cast<int32_t>(std::min<int64_t>(N * H * W * C, INT32_MAX));
        dims[0] = {0, to_i32(N * H * W, "N*H*W"), to_i32(C, "C"), 0};
        dims[1] = {0, 1, past_end, 0};
        dims[2] = {0, to_i32(C, "C"), 1, 0};
        dims[3] = {0, 1, past_end, 0};
    } else {
        dims[0] = {0, to_i32(W, "W"), stride(3, layout == Layout::nchw ? 1 : 0), 0};
        dims[1] = {0, to_i32(H, "H"), stride(2, 0), 0};
        dims[2] = {0, to_i32(C, "C"), stride(1, layout == Layout::nhwc ? 1 : 0), 0};
        dims[3] = {0, to_i32(N, "N"), stride(0, 0), 0};
    }
    HalideBuffer b(element_type(t.dtype()), t.device() == Device::CPU ? t.data_ptr() : nullptr, 4,
                   dims);
    if (t.device() != Device::CPU) {
        // A device tensor: wrap the caller's pointer, zero copy; detached with the buffer.
        halide_call("wrapping a device pointer", [&](void *uc) {
            return b.device_wrap_native(device_interface(t.device()), t.device_handle(), uc);
        });
    }
    return b;
}

bool needs_large_buffers(const HalideBuffer &b) {
    int64_t elements = 1, lo = 0, hi = 0;
    for (int i = 0; i < b.dimensions(); ++i) {
        const halide_dimension_t &d = b.raw_buffer()->dim[i];
        const int64_t reach = int64_t(d.extent - 1) * d.stride;  // 32 x 32 bits: no overflow
        if (std::abs(int64_t(d.extent) * d.stride) > INT32_MAX) return true;
        elements *= d.extent;  // each factor < 2^31: checked before it could overflow
        if (elements > INT32_MAX) return true;
        (reach < 0 ? lo : hi) += reach;
    }
    return hi - lo > INT32_MAX;
}

uint64_t app_device_handle(HalideBuffer &b, Device d) {
#if BN2D_HAVE_GPU
    if (d == Device::Cuda) return halide_cuda_get_device_ptr(nullptr, b.raw_buffer());
    if (d == Device::OpenCL)
        return reinterpret_cast<uint64_t>(halide_opencl_get_cl_mem(nullptr, b.raw_buffer()));
#endif
    (void)b;
    throw Error(std::string("no device handle on ") + device_name(d));
}

// Empty buffers (a module with 0 channels) have no device allocation.
void sync_to_device(HalideBuffer &b, Device d, const char *what) {
    if (d == Device::CPU || b.number_of_elements() == 0) return;
    b.set_host_dirty();
    halide_call(what, [&](void *uc) { return b.copy_to_device(device_interface(d), uc); });
}

void sync_to_host(HalideBuffer &b, Device d, const char *what) {
    if (d == Device::CPU || b.number_of_elements() == 0) return;
    b.set_host_dirty(false);
    b.set_device_dirty();
    halide_call(what, [&](void *uc) { return b.copy_to_host(uc); });
}

}  // namespace bn2d::detail
