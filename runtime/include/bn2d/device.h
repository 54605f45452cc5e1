// GPU devices: availability, the application's CUDA context, and owning device buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bn2d/tensor.h"

namespace bn2d {

// Whether kernels can run on this device now (driver, device present). Never throws.
bool device_available(Device device);
// Why device_available() is false ("" if it is true).
std::string device_unavailable_reason(Device device);
// Run this thread's CUDA calls in the application's context and stream (CUcontext, CUstream),
// so an app that already uses CUDA, or PyTorch, can call us on its stream. Per thread, as
// PyTorch's current stream: each call carries its thread's choice to Halide (its user_context),
// so threads with different streams do not meet. nullptr restores Halide's own context.
void use_cuda_context(void *cu_context, void *cu_stream);
// Wait until queued device work is done.
void device_synchronize(Device device);

// An owning allocation on a device (or the CPU), with explicit host<->device transfers.
// For tests, demos and apps that do not already manage device memory; apps that do wrap their
// own pointers with Tensor::on_device() instead (zero copy).
class DeviceBuffer {
public:
    // Contiguous, numel elements of `dtype`; throws Error.
    DeviceBuffer(Device device, std::vector<int64_t> sizes, DType dtype = DType::float32);
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer &&) noexcept;
    DeviceBuffer &operator=(DeviceBuffer &&) noexcept;
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;

    // numel() elements host -> device, and device -> host (waits for queued work). T is the
    // element's C++ type (float, double, uint16_t for 16-bit types), checked against dtype().
    template<typename T>
    void upload(const std::vector<T> &host) {
        check_element(sizeof(T), host.size());
        upload_bytes(host.data());
    }
    template<typename T = float>
    std::vector<T> download() const {
        std::vector<T> out(static_cast<size_t>(numel()));
        check_element(sizeof(T), out.size());
        download_bytes(out.data());
        return out;
    }
    void upload_bytes(const void *host);
    void download_bytes(void *host) const;
    Tensor view() const;  // the Tensor to pass to the module: contiguous
    // Another view of the allocation (e.g. channels_last strides); must stay inside it.
    Tensor view(std::vector<int64_t> sizes, std::vector<int64_t> strides) const;
    int64_t numel() const;
    Device device() const;
    DType dtype() const;

private:
    void check_element(size_t bytes, size_t count) const;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace bn2d
