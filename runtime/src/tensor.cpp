// Tensor: non-owning strided views of the caller's memory.
#include "bn2d/tensor.h"

#include "bn2d/errors.h"

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

}  // namespace bn2d
