// Tensor: non-owning strided views of the caller's memory; element types.
#include "bn2d/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "bn2d/errors.h"
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

const char *dtype_name(DType t) {
    switch (t) {
    case DType::float32: return "float32";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
    case DType::float64: return "float64";
    }
    return "?";
}

// DType's enumerators index the variant table's dtypes (generators/variants.cmake): the kernel
// libraries, the dispatch table's rows and BN2D_VERBOSE's names all follow that list.
constexpr bool same_name(const char *a, const char *b) {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
}
static_assert(vocabulary::kDtypeCount == 4 &&
                  same_name(vocabulary::kDtypes[static_cast<int>(DType::float32)], "f32") &&
                  same_name(vocabulary::kDtypes[static_cast<int>(DType::bfloat16)], "bf16") &&
                  same_name(vocabulary::kDtypes[static_cast<int>(DType::float16)], "f16") &&
                  same_name(vocabulary::kDtypes[static_cast<int>(DType::float64)], "f64"),
              "bn2d::DType and BN2D_DTYPES in generators/variants.cmake list the dtypes in "
              "different orders");

const char *dtype_short_name(DType t) {
    const int i = static_cast<int>(t);
    return i >= 0 && i < vocabulary::kDtypeCount ? vocabulary::kDtypes[i] : "?";
}

int dtype_size(DType t) {
    switch (t) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    default: return 2;
    }
}

DType dtype_from_name(const std::string &name) {
    for (DType t : {DType::float32, DType::bfloat16, DType::float16, DType::float64})
        if (name == dtype_name(t) || name == dtype_short_name(t)) return t;
    throw Error("unknown dtype '" + name + "' (float32, bfloat16, float16, float64)");
}

uint16_t bfloat16_from_float(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if (std::isnan(v)) return 0x7fc0;
    return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

float float_from_bfloat16(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}

uint16_t float16_from_float(float v) {
    const _Float16 h = static_cast<_Float16>(v);  // IEEE conversion: round to nearest even
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

float float_from_float16(uint16_t bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
}

namespace {
std::string shape_of(const std::vector<int64_t> &sizes) {
    std::string s = "[";
    for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
    return s + "]";
}

// Row-major strides; size-0 and size-1 dimensions count as 1, as in PyTorch.
std::vector<int64_t> contiguous_strides(const std::vector<int64_t> &sizes) {
    std::vector<int64_t> strides(sizes.size());
    int64_t s = 1;
    for (size_t i = sizes.size(); i-- > 0;) {
        strides[i] = s;
        if (i > 0 && __builtin_mul_overflow(s, std::max<int64_t>(sizes[i], 1), &s))
            throw Error("Tensor: contiguous strides of " + shape_of(sizes) + " overflow int64");
    }
    return strides;
}
}  // namespace

Tensor::Tensor(float *data, std::vector<int64_t> sizes, Device device)
    : Tensor(data, DType::float32, std::move(sizes), {}, device) {}

namespace {
void check_rank(const std::vector<int64_t> &sizes, const std::vector<int64_t> &strides) {
    if (strides.size() != sizes.size())
        throw Error("Tensor: " + std::to_string(sizes.size()) + " sizes but " +
                    std::to_string(strides.size()) + " strides");
}
}  // namespace

Tensor::Tensor(float *data, std::vector<int64_t> sizes, std::vector<int64_t> strides, Device device)
    : data_(data), sizes_(std::move(sizes)), strides_(std::move(strides)), device_(device) {
    detail::check_enums("Tensor", DType::float32, device);
    check_rank(sizes_, strides_);
}

Tensor::Tensor(void *data, DType dtype, std::vector<int64_t> sizes, std::vector<int64_t> strides,
               Device device)
    : data_(data), sizes_(std::move(sizes)), strides_(std::move(strides)), device_(device),
      dtype_(dtype) {
    detail::check_enums("Tensor", dtype, device);
    if (strides_.empty()) strides_ = contiguous_strides(sizes_);
    check_rank(sizes_, strides_);
}

std::vector<int64_t> Tensor::channels_last_strides(const std::vector<int64_t> &sizes) {
    if (sizes.size() != 4) throw Error("channels_last: needs 4 sizes (N, C, H, W)");
    const int64_t C = sizes[1], H = sizes[2], W = sizes[3];
    return {H * W * C, 1, W * C, C};
}

Tensor Tensor::channels_last(void *data, DType dtype, int64_t n, int64_t c, int64_t h, int64_t w,
                             Device device) {
    return Tensor(data, dtype, {n, c, h, w}, channels_last_strides({n, c, h, w}), device);
}

Tensor Tensor::on_device(uint64_t handle, std::vector<int64_t> sizes, Device device, DType dtype,
                         std::vector<int64_t> strides) {
    if (device == Device::CPU) throw Error("Tensor::on_device: device must be cuda or opencl");
    Tensor t(nullptr, dtype, std::move(sizes), std::move(strides), device);
    t.handle_ = handle;
    return t;
}

void Tensor::check_element_type(size_t bytes, bool floating) const {
    const bool ok = bytes == static_cast<size_t>(dtype_size(dtype_)) &&
                    floating == (dtype_ == DType::float32 || dtype_ == DType::float64);
    if (!ok)
        throw Error(std::string("Tensor::data<T>(): T does not match the tensor's dtype ") +
                    dtype_name(dtype_) + " (float, double, or uint16_t for 16-bit types)");
}

int64_t Tensor::numel() const {
    for (int64_t s : sizes_)
        if (s == 0) return 0;  // an empty tensor, whatever its other sizes
    int64_t n = 1;
    for (int64_t s : sizes_)
        if (__builtin_mul_overflow(n, s, &n))
            throw Error("Tensor: the number of elements of " + shape_string() + " overflows int64");
    return n;
}

std::string Tensor::shape_string() const { return shape_of(sizes_); }

namespace detail {

// An enum value cast from an integer that names none of its members is refused where it enters
// (a module or a tensor), not reported later as "?".
void check_enums(const char *where, DType dtype, Device device) {
    if (static_cast<unsigned>(dtype) > static_cast<unsigned>(DType::float64))
        throw Error(std::string(where) + ": unknown dtype " +
                    std::to_string(static_cast<int>(dtype)) +
                    " (DType::float32, bfloat16, float16 or float64)");
    if (static_cast<unsigned>(device) > static_cast<unsigned>(Device::OpenCL))
        throw Error(std::string(where) + ": unknown device " +
                    std::to_string(static_cast<int>(device)) + " (Device::CPU, Cuda or OpenCL)");
}

ElementSpan element_span(const Tensor &t) {
    ElementSpan span;
    if (t.numel() == 0) return span;
    const int64_t bytes = dtype_size(t.dtype());
    for (int i = 0; i < t.dim(); ++i) {
        int64_t reach = 0;
        int64_t &end = t.stride(i) < 0 ? span.lo : span.hi;
        int64_t unused;
        if (__builtin_mul_overflow(t.size(i) - 1, t.stride(i), &reach) ||
            __builtin_add_overflow(end, reach, &end) || __builtin_mul_overflow(end, bytes, &unused))
            throw Error("Tensor " + t.shape_string() + " with strides " + shape_of(t.strides()) +
                        ": its memory span overflows 64-bit byte offsets");
    }
    return span;
}

double load_element(const void *p, DType dtype) {
    switch (dtype) {
    case DType::float32: {
        float v;
        std::memcpy(&v, p, 4);
        return v;
    }
    case DType::float64: {
        double v;
        std::memcpy(&v, p, 8);
        return v;
    }
    case DType::bfloat16: {
        uint16_t v;
        std::memcpy(&v, p, 2);
        return float_from_bfloat16(v);
    }
    case DType::float16: {
        uint16_t v;
        std::memcpy(&v, p, 2);
        return float_from_float16(v);
    }
    }
    return 0;
}

void store_element(void *p, DType dtype, double v) {
    switch (dtype) {
    case DType::float32: {
        const float f = static_cast<float>(v);
        std::memcpy(p, &f, 4);
        break;
    }
    case DType::float64: std::memcpy(p, &v, 8); break;
    case DType::bfloat16: {
        const uint16_t b = bfloat16_from_float(static_cast<float>(v));
        std::memcpy(p, &b, 2);
        break;
    }
    case DType::float16: {
        const uint16_t b = float16_from_float(static_cast<float>(v));
        std::memcpy(p, &b, 2);
        break;
    }
    }
}

// 128-bit offsets for spans and reaches that may overflow int64 (a GCC/Clang extension;
// __extension__ keeps -Wpedantic quiet about it).
__extension__ typedef __int128 Int128;

bool self_overlaps(const Tensor &t) {
    if (t.numel() == 0) return false;
    std::vector<std::pair<int64_t, int64_t>> dims;  // (|stride|, size) of dims with size > 1
    for (int i = 0; i < t.dim(); ++i)
        if (t.size(i) > 1) dims.push_back({std::llabs(t.stride(i)), t.size(i)});
    std::sort(dims.begin(), dims.end());
    Int128 reach = 1;  // elements spanned by the smaller dims (may exceed int64)
    for (const auto &[stride, size] : dims) {
        if (stride < reach) return true;
        reach = static_cast<Int128>(stride) * size;
    }
    return false;
}

bool overlaps(const Tensor &a, const Tensor &b) {
    if (a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
    // A cl_mem is an opaque object: the same object is the only overlap we can see.
    if (a.device() == Device::OpenCL) return a.device_handle() == b.device_handle();
    auto span = [](const Tensor &t) {
        const ElementSpan s = element_span(t);
        const Int128 base = t.device() == Device::CPU
                                ? static_cast<Int128>(reinterpret_cast<uintptr_t>(t.data_ptr()))
                                : static_cast<Int128>(t.device_handle());
        const int64_t bytes = dtype_size(t.dtype());
        return std::make_pair(base + static_cast<Int128>(s.lo) * bytes,
                              base + (static_cast<Int128>(s.hi) + 1) * bytes);
    };
    auto [a0, a1] = span(a);
    auto [b0, b1] = span(b);
    return a0 < b1 && b0 < a1;
}

}  // namespace detail

}  // namespace bn2d
