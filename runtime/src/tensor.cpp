// Tensor views, Halide buffer views over them, device buffers and device checks.
#include <climits>
#include <cstring>
#include <map>
#include <mutex>

#include "HalideRuntimeCuda.h"
#include "HalideRuntimeOpenCL.h"
#include "internal.h"

namespace bn2d {

const char *device_name(Device d) {
    switch (d) {
    case Device::CPU: return "cpu";
    case Device::Cuda: return "cuda";
    case Device::OpenCL: return "opencl";
    }
    return "?";
}

namespace {
std::vector<int64_t> contiguous_strides(const std::vector<int64_t> &sizes) {
    std::vector<int64_t> strides(sizes.size());
    int64_t s = 1;
    for (size_t i = sizes.size(); i-- > 0;) {
        strides[i] = s;
        s *= sizes[i];
    }
    return strides;
}
}  // namespace

Tensor::Tensor(float *data, std::vector<int64_t> sizes, Device device)
    : data_(data), sizes_(std::move(sizes)), device_(device) {
    strides_ = contiguous_strides(sizes_);
}

Tensor::Tensor(float *data, std::vector<int64_t> sizes, std::vector<int64_t> strides, Device device)
    : data_(data), sizes_(std::move(sizes)), strides_(std::move(strides)), device_(device) {
    if (strides_.size() != sizes_.size())
        throw Error("Tensor: " + std::to_string(sizes_.size()) + " sizes but " +
                    std::to_string(strides_.size()) + " strides");
}

Tensor Tensor::on_device(uint64_t handle, std::vector<int64_t> sizes, Device device) {
    if (device == Device::CPU) throw Error("Tensor::on_device: device must be cuda or opencl");
    Tensor t(nullptr, std::move(sizes), device);
    t.handle_ = handle;
    return t;
}

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (int64_t s : sizes_) n *= s;
    return n;
}

std::string Tensor::shape_string() const {
    std::string s = "[";
    for (size_t i = 0; i < sizes_.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes_[i]);
    return s + "]";
}

namespace detail {

HalideView::~HalideView() {
#if BN2D_HAVE_GPU
    if (wrapped_device) {
        if (device == Device::Cuda) halide_cuda_detach_device_ptr(nullptr, &buf);
        if (device == Device::OpenCL) halide_opencl_detach_cl_mem(nullptr, &buf);
    }
#endif
}

namespace {
int32_t to_i32(int64_t v, const char *what) {
    if (v > INT32_MAX || v < INT32_MIN)
        throw Error(std::string("tensor too large: ") + what + " " + std::to_string(v) +
                    " does not fit the kernels' 32-bit indexing");
    return static_cast<int32_t>(v);
}

void attach(const Tensor &t, HalideView &out) {
    out.buf.type = halide_type_of<float>();
    out.buf.dim = out.dim;
    out.device = t.device();
    if (t.device() == Device::CPU) {
        out.buf.host = reinterpret_cast<uint8_t *>(t.data());
        return;
    }
#if BN2D_HAVE_GPU
    // A device tensor: wrap the caller's pointer, zero copy. Detached in ~HalideView.
    int rc = t.device() == Device::Cuda
                 ? halide_cuda_wrap_device_ptr(nullptr, &out.buf, t.device_handle())
                 : halide_opencl_wrap_cl_mem(nullptr, &out.buf, t.device_handle());
    check_halide(rc, "wrapping a device pointer");
    out.wrapped_device = true;
#else
    throw Error("device tensors need a build with BN2D_GPU=ON");
#endif
}
}  // namespace

void view_nchw(const Tensor &t, bool fuse_plane, HalideView &out) {
    const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
    int64_t max_offset = 0;
    for (int i = 0; i < 4; ++i) max_offset += (t.size(i) - 1) * t.stride(i);
    to_i32(max_offset, "element span");
    if (fuse_plane) {
        out.dim[0] = {0, to_i32(H * W, "H*W"), 1, 0};
        out.dim[1] = {0, 1, to_i32(H * W, "H*W"), 0};
    } else {
        // The kernels require a unit W stride; a size-1 W's stride is meaningless (PyTorch's
        // x[..., ::8] of a W = 8 tensor has W = 1, stride 8).
        out.dim[0] = {0, to_i32(W, "W"), W == 1 ? 1 : to_i32(t.stride(3), "stride"), 0};
        out.dim[1] = {0, to_i32(H, "H"), to_i32(t.stride(2), "stride"), 0};
    }
    out.dim[2] = {0, to_i32(C, "C"), to_i32(t.stride(1), "stride"), 0};
    out.dim[3] = {0, to_i32(N, "N"), to_i32(t.stride(0), "stride"), 0};
    out.buf.dimensions = 4;
    attach(t, out);
}

uint64_t app_device_handle(Halide::Runtime::Buffer<float> &b, Device d) {
#if BN2D_HAVE_GPU
    if (d == Device::Cuda) return halide_cuda_get_device_ptr(nullptr, b.raw_buffer());
    if (d == Device::OpenCL) return reinterpret_cast<uint64_t>(halide_opencl_get_cl_mem(nullptr, b.raw_buffer()));
#endif
    (void)b;
    throw Error(std::string("no device handle on ") + device_name(d));
}

void sync_to_device(Halide::Runtime::Buffer<float> &b, Device d, const char *what) {
    if (d == Device::CPU) return;
    b.set_host_dirty();
    check_halide(b.copy_to_device(device_interface(d)), what);
}

void sync_to_host(Halide::Runtime::Buffer<float> &b, Device d, const char *what) {
    if (d == Device::CPU) return;
    b.set_host_dirty(false);
    b.set_device_dirty();
    check_halide(b.copy_to_host(), what);
}

void view_vector(Halide::Runtime::Buffer<float> &b, Device d, HalideView &out) {
    out.buf = *b.raw_buffer();
    out.dim[0] = b.raw_buffer()->dim[0];
    out.buf.dim = out.dim;
    out.device = d;
}

}  // namespace detail

// ---- DeviceBuffer ----

struct DeviceBuffer::Impl {
    Device device;
    std::vector<int64_t> sizes;
    Halide::Runtime::Buffer<float> buf;  // 1-D, numel elements
};

DeviceBuffer::DeviceBuffer(Device device, std::vector<int64_t> sizes)
    : impl_(std::make_unique<Impl>()) {
    detail::init_runtime();
    impl_->device = device;
    impl_->sizes = std::move(sizes);
    int64_t n = 1;
    for (int64_t s : impl_->sizes) {
        if (s < 0) throw Error("DeviceBuffer: negative size");
        n *= s;
    }
    if (n > INT32_MAX) throw Error("DeviceBuffer: too large for 32-bit indexing");
    impl_->buf = Halide::Runtime::Buffer<float>(static_cast<int>(std::max<int64_t>(n, 1)));
    if (device != Device::CPU) {
        detail::check_halide(impl_->buf.device_malloc(detail::device_interface(device)),
                             (std::string("allocating on ") + device_name(device)).c_str());
    }
}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer &&) noexcept = default;
DeviceBuffer &DeviceBuffer::operator=(DeviceBuffer &&) noexcept = default;

int64_t DeviceBuffer::numel() const {
    int64_t n = 1;
    for (int64_t s : impl_->sizes) n *= s;
    return n;
}
Device DeviceBuffer::device() const { return impl_->device; }

void DeviceBuffer::upload(const float *host) {
    std::memcpy(impl_->buf.data(), host, sizeof(float) * numel());
    detail::sync_to_device(impl_->buf, impl_->device, "DeviceBuffer::upload");
}

void DeviceBuffer::download(float *host) const {
    detail::sync_to_host(impl_->buf, impl_->device, "DeviceBuffer::download");
    std::memcpy(host, impl_->buf.data(), sizeof(float) * numel());
}

void DeviceBuffer::upload(const std::vector<float> &host) {
    if (static_cast<int64_t>(host.size()) != numel())
        throw Error("DeviceBuffer::upload: " + std::to_string(host.size()) + " floats for a buffer of " +
                    std::to_string(numel()));
    upload(host.data());
}

std::vector<float> DeviceBuffer::download() const {
    std::vector<float> out(numel());
    download(out.data());
    return out;
}

Tensor DeviceBuffer::view() const {
    if (impl_->device == Device::CPU) return Tensor(impl_->buf.data(), impl_->sizes);
    return Tensor::on_device(detail::app_device_handle(impl_->buf, impl_->device), impl_->sizes,
                             impl_->device);
}

// ---- GPU availability and context ----

namespace {
struct Availability {
    bool ok;
    std::string reason;
};

Availability probe(Device d) {
    if (d == Device::CPU) return {true, ""};
#if !BN2D_HAVE_GPU
    return {false, "built without GPU support (BN2D_GPU=OFF)"};
#else
    try {
        DeviceBuffer b(d, {1});
        float one = 1.0f, back = 0.0f;
        b.upload(&one);
        b.download(&back);
        if (back != 1.0f) return {false, "device round trip returned wrong data"};
        return {true, ""};
    } catch (const Error &e) {
        return {false, std::string("no usable ") + device_name(d) + " device or driver (" +
                           e.what() + ")"};
    }
#endif
}

const Availability &availability(Device d) {
    static std::mutex m;
    static std::map<Device, Availability> cache;
    std::lock_guard<std::mutex> lock(m);
    auto it = cache.find(d);
    if (it == cache.end()) it = cache.emplace(d, probe(d)).first;
    return it->second;
}

void *g_cu_context = nullptr;
void *g_cu_stream = nullptr;
#if BN2D_HAVE_GPU
halide_cuda_acquire_context_t g_default_acquire = nullptr;
halide_cuda_release_context_t g_default_release = nullptr;
halide_cuda_get_stream_t g_default_stream = nullptr;

int app_acquire(void *, void **ctx, bool) {
    *ctx = g_cu_context;
    return 0;
}
int app_release(void *) { return 0; }
int app_stream(void *, void *, void **stream) {
    *stream = g_cu_stream;
    return 0;
}
#endif
}  // namespace

bool device_available(Device d) { return availability(d).ok; }
std::string device_unavailable_reason(Device d) { return availability(d).reason; }

void use_cuda_context(void *cu_context, void *cu_stream) {
#if BN2D_HAVE_GPU
    detail::init_runtime();
    static std::once_flag once;
    std::call_once(once, [] {
        g_default_acquire = halide_set_cuda_acquire_context(nullptr);
        halide_set_cuda_acquire_context(g_default_acquire);
        g_default_release = halide_set_cuda_release_context(nullptr);
        halide_set_cuda_release_context(g_default_release);
        g_default_stream = halide_set_cuda_get_stream(nullptr);
        halide_set_cuda_get_stream(g_default_stream);
    });
    g_cu_context = cu_context;
    g_cu_stream = cu_stream;
    if (cu_context) {
        halide_set_cuda_acquire_context(app_acquire);
        halide_set_cuda_release_context(app_release);
        halide_set_cuda_get_stream(app_stream);
    } else {
        halide_set_cuda_acquire_context(g_default_acquire);
        halide_set_cuda_release_context(g_default_release);
        halide_set_cuda_get_stream(g_default_stream);
    }
#else
    (void)cu_context;
    (void)cu_stream;
    throw Error("use_cuda_context: built without GPU support (BN2D_GPU=OFF)");
#endif
}

void device_synchronize(Device d) {
    if (d == Device::CPU) return;
    detail::init_runtime();
    detail::check_halide(halide_device_sync_global(nullptr, detail::device_interface(d)),
                         "device_synchronize");
}

}  // namespace bn2d
