// Non-owning, strided tensor views: the only way data enters or leaves the library.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace bn2d {

// Where a tensor's memory lives. For Cuda, data is a CUdeviceptr; for OpenCL, a cl_mem.
enum class Device { CPU, Cuda, OpenCL };
const char *device_name(Device d);

// Element types, as torch.float32, torch.bfloat16, torch.float16, torch.float64.
// bfloat16 and float16 elements are 16-bit patterns (uint16_t) in the caller's memory.
enum class DType { float32, bfloat16, float16, float64 };
const char *dtype_name(DType t);        // "float32", "bfloat16", "float16", "float64"
const char *dtype_short_name(DType t);  // "f32", "bf16", "f16", "f64" (BN2D_VERBOSE, kernel names)
int dtype_size(DType t);                // bytes per element
DType dtype_from_name(const std::string &name);  // either spelling; throws Error on others

// Conversions for 16-bit elements, with PyTorch's rounding (to nearest even; NaN stays NaN).
uint16_t bfloat16_from_float(float v);
float float_from_bfloat16(uint16_t bits);
uint16_t float16_from_float(float v);
float float_from_float16(uint16_t bits);

// A view of memory the caller owns: element type, sizes and strides (in elements, any order,
// any gaps, negative or zero for inputs). No copies are ever made behind the caller's back.
// data points at element [0, 0, 0, 0], as in PyTorch.
class Tensor {
public:
    Tensor() = default;
    // float32 views: contiguous (row-major), or explicitly strided (one stride per size).
    Tensor(float *data, std::vector<int64_t> sizes, Device device = Device::CPU);
    Tensor(float *data, std::vector<int64_t> sizes, std::vector<int64_t> strides,
           Device device = Device::CPU);
    // Any element type; empty strides: contiguous.
    Tensor(void *data, DType dtype, std::vector<int64_t> sizes, std::vector<int64_t> strides = {},
           Device device = Device::CPU);
    // An NCHW view of contiguous memory.
    static Tensor nchw(float *data, int64_t n, int64_t c, int64_t h, int64_t w,
                       Device device = Device::CPU) {
        return Tensor(data, {n, c, h, w}, device);
    }
    // Sizes [N, C, H, W] over NHWC memory (PyTorch's torch.channels_last): strides
    // [H*W*C, 1, W*C, C].
    static Tensor channels_last(void *data, DType dtype, int64_t n, int64_t c, int64_t h, int64_t w,
                                Device device = Device::CPU);
    static std::vector<int64_t> channels_last_strides(const std::vector<int64_t> &sizes);
    // Wraps a device allocation: a CUdeviceptr or a cl_mem, as an integer handle.
    static Tensor on_device(uint64_t handle, std::vector<int64_t> sizes, Device device,
                            DType dtype = DType::float32, std::vector<int64_t> strides = {});

    // The data as T*: T must match dtype() (float, double, or uint16_t for 16-bit types).
    template<typename T = float>
    T *data() const {
        check_element_type(sizeof(T), std::is_floating_point<T>::value);
        return static_cast<T *>(data_);
    }
    void *data_ptr() const { return data_; }
    DType dtype() const { return dtype_; }
    uint64_t device_handle() const { return handle_; }
    Device device() const { return device_; }
    int dim() const { return static_cast<int>(sizes_.size()); }
    int64_t size(int i) const { return sizes_.at(i); }
    int64_t stride(int i) const { return strides_.at(i); }
    const std::vector<int64_t> &sizes() const { return sizes_; }
    const std::vector<int64_t> &strides() const { return strides_; }
    int64_t numel() const;  // throws Error if the product of the sizes overflows int64
    bool defined() const { return data_ != nullptr || handle_ != 0; }
    // "[20, 100, 35, 45]"
    std::string shape_string() const;

private:
    void check_element_type(size_t bytes, bool floating) const;

    void *data_ = nullptr;
    uint64_t handle_ = 0;
    std::vector<int64_t> sizes_, strides_;
    Device device_ = Device::CPU;
    DType dtype_ = DType::float32;
};

}  // namespace bn2d
