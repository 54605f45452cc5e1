// Halide glue: the error handler, device interfaces, and Halide buffers over Tensors.
#include <climits>
#include <mutex>

#include "HalideRuntimeCuda.h"
#include "HalideRuntimeOpenCL.h"
#include "internal.h"

namespace bn2d::detail {
namespace {

// Halide's default handler aborts the process. Ours keeps the message for the calling thread;
// check_halide() turns it into an exception when the kernel returns its error code.
// A kernel error raised inside a parallel task is reported on a worker thread, so the last
// message is also kept process-wide as a fallback for the calling thread.
thread_local std::string g_last_halide_error;
std::mutex g_any_error_mutex;
std::string g_any_halide_error;

void capture_error(void *, const char *msg) {
    std::string m = msg ? msg : "";
    while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
    g_last_halide_error = m;
    std::lock_guard<std::mutex> lock(g_any_error_mutex);
    g_any_halide_error = m;
}

int32_t to_i32(int64_t v, const char *what) {
    if (v > INT32_MAX || v < INT32_MIN)
        throw Error(std::string("tensor too large: ") + what + " " + std::to_string(v) +
                    " does not fit the kernels' 32-bit indexing");
    return static_cast<int32_t>(v);
}

}  // namespace

void init_runtime() {
    static std::once_flag once;
    std::call_once(once, [] {
        halide_set_error_handler(capture_error);
        init_settings_from_environment();
    });
}

void check_halide(int rc, const std::string &what) {
    if (rc == 0) return;
    std::string msg = g_last_halide_error;
    g_last_halide_error.clear();
    if (msg.empty()) {
        std::lock_guard<std::mutex> lock(g_any_error_mutex);
        msg = g_any_halide_error;
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
    default: throw Error(std::string(device_name(d)) + ": built without GPU support (BN2D_GPU=OFF)");
#endif
    }
    return nullptr;
}

HalideBuffer nchw_buffer(const Tensor &t, bool fuse_plane) {
    const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
    int64_t max_offset = 0;
    for (int i = 0; i < 4; ++i) max_offset += (t.size(i) - 1) * t.stride(i);
    to_i32(max_offset, "element span");
    halide_dimension_t dims[4];
    if (fuse_plane) {
        dims[0] = {0, to_i32(H * W, "H*W"), 1, 0};
        dims[1] = {0, 1, to_i32(H * W, "H*W"), 0};
    } else {
        // The kernels require a unit W stride; a size-1 W's stride is meaningless (PyTorch's
        // x[..., ::8] of a W = 8 tensor has W = 1, stride 8).
        dims[0] = {0, to_i32(W, "W"), W == 1 ? 1 : to_i32(t.stride(3), "stride"), 0};
        dims[1] = {0, to_i32(H, "H"), to_i32(t.stride(2), "stride"), 0};
    }
    dims[2] = {0, to_i32(C, "C"), to_i32(t.stride(1), "stride"), 0};
    dims[3] = {0, to_i32(N, "N"), to_i32(t.stride(0), "stride"), 0};
    HalideBuffer b(t.device() == Device::CPU ? t.data() : nullptr, 4, dims);
    if (t.device() != Device::CPU) {
        // A device tensor: wrap the caller's pointer, zero copy; detached with the buffer.
        check_halide(b.device_wrap_native(device_interface(t.device()), t.device_handle()),
                     "wrapping a device pointer");
    }
    return b;
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

void sync_to_device(HalideBuffer &b, Device d, const char *what) {
    if (d == Device::CPU) return;
    b.set_host_dirty();
    check_halide(b.copy_to_device(device_interface(d)), what);
}

void sync_to_host(HalideBuffer &b, Device d, const char *what) {
    if (d == Device::CPU) return;
    b.set_host_dirty(false);
    b.set_device_dirty();
    check_halide(b.copy_to_host(), what);
}

}  // namespace bn2d::detail
