// Non-owning, strided float32 tensor views: the only way data enters or leaves the library.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace bn2d {

// Where a tensor's memory lives. For Cuda, data is a CUdeviceptr; for OpenCL, a cl_mem.
enum class Device { CPU, Cuda, OpenCL };
const char *device_name(Device d);

// A view of float32 memory the caller owns: sizes and strides (in elements, any order, any
// gaps). No copies are ever made behind the caller's back.
class Tensor {
public:
    Tensor() = default;
    // Contiguous (row-major) view.
    Tensor(float *data, std::vector<int64_t> sizes, Device device = Device::CPU);
    // Explicitly strided view; strides in elements, one per size.
    Tensor(float *data, std::vector<int64_t> sizes, std::vector<int64_t> strides,
           Device device = Device::CPU);
    // An NCHW view of contiguous memory.
    static Tensor nchw(float *data, int64_t n, int64_t c, int64_t h, int64_t w,
                       Device device = Device::CPU) {
        return Tensor(data, {n, c, h, w}, device);
    }
    // Wraps a device allocation: a CUdeviceptr or a cl_mem, as an integer handle.
    static Tensor on_device(uint64_t handle, std::vector<int64_t> sizes, Device device);

    float *data() const { return data_; }
    uint64_t device_handle() const { return handle_; }
    Device device() const { return device_; }
    int dim() const { return static_cast<int>(sizes_.size()); }
    int64_t size(int i) const { return sizes_.at(i); }
    int64_t stride(int i) const { return strides_.at(i); }
    const std::vector<int64_t> &sizes() const { return sizes_; }
    const std::vector<int64_t> &strides() const { return strides_; }
    int64_t numel() const;
    bool defined() const { return data_ != nullptr || handle_ != 0; }
    // "[20, 100, 35, 45]"
    std::string shape_string() const;

private:
    float *data_ = nullptr;
    uint64_t handle_ = 0;
    std::vector<int64_t> sizes_, strides_;
    Device device_ = Device::CPU;
};

}  // namespace bn2d
