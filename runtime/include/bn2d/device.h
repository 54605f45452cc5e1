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
// Run CUDA kernels in the application's context and stream (CUcontext, CUstream), so an app
// that already uses CUDA, or PyTorch, can call us on its stream. nullptr restores Halide's own.
void use_cuda_context(void *cu_context, void *cu_stream);
// Wait until queued device work is done.
void device_synchronize(Device device);

// An owning allocation on a device (or the CPU), with explicit host<->device transfers.
// For tests, demos and apps that do not already manage device memory; apps that do wrap their
// own pointers with Tensor::on_device() instead (zero copy).
class DeviceBuffer {
public:
    DeviceBuffer(Device device, std::vector<int64_t> sizes);  // contiguous; throws Error
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer &&) noexcept;
    DeviceBuffer &operator=(DeviceBuffer &&) noexcept;
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;

    void upload(const float *host);  // numel() floats, host -> device
    void download(float *host) const;  // device -> host, waits for queued work
    void upload(const std::vector<float> &host);
    std::vector<float> download() const;
    Tensor view() const;  // the Tensor to pass to the module
    int64_t numel() const;
    Device device() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace bn2d
