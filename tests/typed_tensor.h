// Test tensors of any dtype and layout over poisoned memory: values are set and read as
// float64 in logical [N, C, H, W] order; the memory around the view stays poison, so a test
// can check that every element was written and nothing outside it.
#pragma once

#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "bn2d/bn2d.h"
#include "problems.h"

namespace bn2d::test {

using problems::Shape;

// How a test lays out a tensor: strides (elements) and the offset of element [0, 0, 0, 0] in
// an allocation of `span` elements.
struct MemoryLayout {
    std::vector<int64_t> strides;
    int64_t offset = 0, span = 0;
};

// nchw: contiguous. nhwc: channels_last. padded: NCHW order with W stride 2 and padded rows
// (a view such as x[..., ::2]). reversed: channels_last order with H running backwards
// (negative stride, as a flipped view in NumPy) and a gap after every pixel.
inline MemoryLayout memory_layout(const std::string &kind, const Shape &s) {
    const int64_t N = s.n, C = s.c, H = s.h, W = s.w;
    MemoryLayout l;
    if (kind == "nchw") {
        l.strides = {C * H * W, H * W, W, 1};
    } else if (kind == "nhwc") {
        l.strides = {H * W * C, 1, W * C, C};
    } else if (kind == "padded") {
        const int64_t row = 2 * W + 3;
        l.strides = {C * H * row, H * row, row, 2};
    } else if (kind == "reversed") {
        const int64_t pixel = C + 1;
        l.strides = {H * W * pixel, 1, -W * pixel, pixel};
        l.offset = (H - 1) * W * pixel;  // element [0, 0, 0, 0] is the last row
    } else {
        throw std::invalid_argument("memory_layout: " + kind);
    }
    int64_t hi = 0;
    for (int i = 0; i < 4; ++i) {
        const int64_t size = std::vector<int64_t>{N, C, H, W}[i];
        if (l.strides[i] > 0 && size > 0) hi += (size - 1) * l.strides[i];
    }
    l.span = l.offset + hi + 1;
    return l;
}

// A std::allocator whose blocks start on a 64-byte cache line.
template<typename T>
struct LineAligned {
    using value_type = T;
    LineAligned() = default;
    template<typename U>
    LineAligned(const LineAligned<U> &) {}
    T *allocate(size_t n) {
        void *p = ::operator new(n * sizeof(T), std::align_val_t(64));
        return static_cast<T *>(p);
    }
    void deallocate(T *p, size_t) { ::operator delete(p, std::align_val_t(64)); }
    bool operator==(const LineAligned &) const { return true; }
    bool operator!=(const LineAligned &) const { return false; }
};

class TypedTensor {
public:
    TypedTensor(DType dtype, const Shape &s, const std::string &layout)
        : dtype_(dtype), shape_(s), layout_(memory_layout(layout, s)),
          bytes_(static_cast<size_t>(layout_.span) * dtype_size(dtype) + 8) {
        poison();
    }

    // NaN everywhere, in this dtype.
    void poison() {
        for (int64_t i = 0; i < layout_.span; ++i) store(i, std::nan(""));
    }

    Tensor view() {
        return Tensor(bytes_.data() + layout_.offset * dtype_size(dtype_), dtype_,
                      {shape_.n, shape_.c, shape_.h, shape_.w}, layout_.strides);
    }

    // The same tensor on a device: an allocation of the whole span (offset 0 layouts only),
    // copied there and back with upload() and download().
    DeviceBuffer device_buffer(Device d) const {
        if (layout_.offset != 0)
            throw std::invalid_argument("device tensors: offset-0 layouts only");
        return DeviceBuffer(d, {layout_.span}, dtype_);
    }
    Tensor device_view(const DeviceBuffer &b) const {
        return b.view({shape_.n, shape_.c, shape_.h, shape_.w}, layout_.strides);
    }
    void upload(DeviceBuffer &b) const { b.upload_bytes(bytes_.data()); }
    void download(const DeviceBuffer &b) { b.download_bytes(bytes_.data()); }

    // Logical element i of [N, C, H, W] (row-major index).
    void set(int64_t i, double v) { store(offset_of(i), v); }
    double get(int64_t i) const { return load(offset_of(i)); }

    // Fills with normal(mean, stddev) values rounded to the dtype; returns them as stored.
    std::vector<double> randomize(std::mt19937 &rng, double mean = 0.0, double stddev = 1.0) {
        std::normal_distribution<double> d(mean, stddev);
        std::vector<double> v(static_cast<size_t>(shape_.numel()));
        for (int64_t i = 0; i < shape_.numel(); ++i) {
            set(i, d(rng));
            v[i] = get(i);
        }
        return v;
    }
    std::vector<double> values() const {
        std::vector<double> v(static_cast<size_t>(shape_.numel()));
        for (int64_t i = 0; i < shape_.numel(); ++i) v[i] = get(i);
        return v;
    }
    // How many elements of the allocation outside the view are no longer poison.
    int64_t written_outside() const {
        std::vector<bool> inside(static_cast<size_t>(layout_.span));
        for (int64_t i = 0; i < shape_.numel(); ++i) inside[offset_of(i)] = true;
        int64_t n = 0;
        for (int64_t o = 0; o < layout_.span; ++o)
            if (!inside[o] && !std::isnan(load(o))) ++n;
        return n;
    }

private:
    int64_t offset_of(int64_t i) const {
        const int64_t w = i % shape_.w, h = (i / shape_.w) % shape_.h,
                      c = (i / (shape_.w * shape_.h)) % shape_.c,
                      n = i / (shape_.w * shape_.h * shape_.c);
        const auto &st = layout_.strides;
        return layout_.offset + n * st[0] + c * st[1] + h * st[2] + w * st[3];
    }
    void store(int64_t o, double v) {
        uint8_t *p = bytes_.data() + o * dtype_size(dtype_);
        switch (dtype_) {
        case DType::float32: {
            float f = static_cast<float>(v);
            std::memcpy(p, &f, 4);
            break;
        }
        case DType::float64: std::memcpy(p, &v, 8); break;
        case DType::bfloat16: {
            uint16_t b = bfloat16_from_float(static_cast<float>(v));
            std::memcpy(p, &b, 2);
            break;
        }
        case DType::float16: {
            uint16_t b = float16_from_float(static_cast<float>(v));
            std::memcpy(p, &b, 2);
            break;
        }
        }
    }
    double load(int64_t o) const {
        const uint8_t *p = bytes_.data() + o * dtype_size(dtype_);
        switch (dtype_) {
        case DType::float32: {
            float f;
            std::memcpy(&f, p, 4);
            return f;
        }
        case DType::float64: {
            double d;
            std::memcpy(&d, p, 8);
            return d;
        }
        case DType::bfloat16: {
            uint16_t b;
            std::memcpy(&b, p, 2);
            return float_from_bfloat16(b);
        }
        case DType::float16: {
            uint16_t b;
            std::memcpy(&b, p, 2);
            return float_from_float16(b);
        }
        }
        return 0;
    }

    DType dtype_;
    Shape shape_;
    MemoryLayout layout_;
    // 64-byte aligned, as framework allocations are: the streaming-store kernels need lines.
    std::vector<uint8_t, LineAligned<uint8_t>> bytes_;
};

}  // namespace bn2d::test
