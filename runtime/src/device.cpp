// GPU devices: owning device buffers, availability probes, the application's CUDA context.
#include "bn2d/device.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>

#include "HalideRuntimeCuda.h"
#include "HalideRuntimeOpenCL.h"
#include "internal.h"

namespace bn2d {

// ---- DeviceBuffer ----

struct DeviceBuffer::Impl {
    Device device;
    DType dtype;
    std::vector<int64_t> sizes;
    int64_t numel = 0;
    detail::HalideBuffer buf;  // 1-D, max(numel, 1) elements
    size_t bytes() const {
        return static_cast<size_t>(dtype_size(dtype)) * buf.number_of_elements();
    }
};

DeviceBuffer::DeviceBuffer(Device device, std::vector<int64_t> sizes, DType dtype)
    : impl_(std::make_unique<Impl>()) {
    detail::init_runtime();
    impl_->device = device;
    impl_->dtype = dtype;
    impl_->sizes = std::move(sizes);
    int64_t n = 1;
    for (int64_t s : impl_->sizes)
        if (s < 0) throw Error("DeviceBuffer: negative size");
    // Empty when any size is 0, however large the others (as a PyTorch tensor of [2^62, 0]).
    if (std::find(impl_->sizes.begin(), impl_->sizes.end(), 0) != impl_->sizes.end()) {
        n = 0;
    } else {
        for (int64_t s : impl_->sizes)
            if (__builtin_mul_overflow(n, s, &n) || n > INT32_MAX)
                throw Error("DeviceBuffer: more than 2^31 - 1 elements (Halide buffers of one "
                            "dimension hold 32-bit extents)");
    }
    impl_->numel = n;
    impl_->buf = detail::HalideBuffer(detail::element_type(dtype),
                                      static_cast<int>(std::max<int64_t>(n, 1)));
    if (device != Device::CPU) {
        detail::halide_call(std::string("allocating on ") + device_name(device), [&](void *uc) {
            return impl_->buf.device_malloc(detail::device_interface(device), uc);
        });
    }
}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer &&) noexcept = default;
DeviceBuffer &DeviceBuffer::operator=(DeviceBuffer &&) noexcept = default;

int64_t DeviceBuffer::numel() const { return impl_->numel; }
Device DeviceBuffer::device() const { return impl_->device; }
DType DeviceBuffer::dtype() const { return impl_->dtype; }

void DeviceBuffer::upload_bytes(const void *host) {
    std::memcpy(impl_->buf.data(), host, dtype_size(impl_->dtype) * numel());
    detail::sync_to_device(impl_->buf, impl_->device, "DeviceBuffer::upload");
}

void DeviceBuffer::download_bytes(void *host) const {
    detail::sync_to_host(impl_->buf, impl_->device, "DeviceBuffer::download");
    std::memcpy(host, impl_->buf.data(), dtype_size(impl_->dtype) * numel());
}

void DeviceBuffer::check_element(size_t bytes, size_t count) const {
    if (bytes != static_cast<size_t>(dtype_size(impl_->dtype)))
        throw Error(std::string("DeviceBuffer: elements of ") + std::to_string(bytes) +
                    " bytes for a " + dtype_name(impl_->dtype) + " buffer");
    if (count != static_cast<size_t>(numel()))
        throw Error("DeviceBuffer: " + std::to_string(count) + " elements for a buffer of " +
                    std::to_string(numel()));
}

Tensor DeviceBuffer::view() const { return view(impl_->sizes, {}); }

Tensor DeviceBuffer::view(std::vector<int64_t> sizes, std::vector<int64_t> strides) const {
    Tensor probe(nullptr, impl_->dtype, sizes, strides);
    int64_t hi = 0;
    for (int i = 0; i < probe.dim(); ++i) {
        if (probe.size(i) == 0) hi = -1;
        if (probe.stride(i) < 0) throw Error("DeviceBuffer::view: negative strides");
        if (hi >= 0) hi += (probe.size(i) - 1) * probe.stride(i);
    }
    if (hi >= numel())
        throw Error("DeviceBuffer::view: " + probe.shape_string() + " reaches past the buffer");
    if (impl_->device == Device::CPU)
        return Tensor(impl_->buf.data(), impl_->dtype, probe.sizes(), probe.strides());
    return Tensor::on_device(detail::app_device_handle(impl_->buf, impl_->device), probe.sizes(),
                             impl_->device, impl_->dtype, probe.strides());
}

// ---- GPU availability and context ----

namespace {
struct Availability {
    bool ok;
    std::string reason;
};

Availability probe(Device d) {
    if (d == Device::CPU) return {true, ""};
    if (const char *why = detail::gpu_kernels_missing(d)) return {false, why};
#if BN2D_HAVE_GPU
    try {
        DeviceBuffer b(d, {1});
        float one = 1.0f, back = 0.0f;
        b.upload_bytes(&one);
        b.download_bytes(&back);
        if (back != 1.0f) return {false, "device round trip returned wrong data"};
        return {true, ""};
    } catch (const Error &e) {
        return {false, std::string("no usable ") + device_name(d) + " device or driver (" +
                           e.what() + ")"};
    }
#else
    return {false, "built without GPU support (BN2D_GPU=OFF)"};  // said above already
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

// use_cuda_context: this thread's choice, read by every Halide call the thread makes
// (detail::HalideCall), as PyTorch's current stream is per thread.
thread_local void *t_cu_context = nullptr;
thread_local void *t_cu_stream = nullptr;
}  // namespace

bool device_available(Device d) { return availability(d).ok; }
std::string device_unavailable_reason(Device d) { return availability(d).reason; }

void use_cuda_context(void *cu_context, void *cu_stream) {
#if BN2D_HAVE_GPU
    detail::init_runtime();  // installs the hooks that read it
    t_cu_context = cu_context;
    t_cu_stream = cu_context ? cu_stream : nullptr;
#else
    (void)cu_context;
    (void)cu_stream;
    throw Error("use_cuda_context: built without GPU support (BN2D_GPU=OFF)");
#endif
}

namespace detail {
void thread_cuda_context(void **cu_context, void **cu_stream) {
    *cu_context = t_cu_context;
    *cu_stream = t_cu_stream;
}
}  // namespace detail

void device_synchronize(Device d) {
    if (d == Device::CPU) return;
    detail::init_runtime();
    detail::halide_call("device_synchronize", [&](void *uc) {
        return halide_device_sync_global(uc, detail::device_interface(d));
    });
}

}  // namespace bn2d
