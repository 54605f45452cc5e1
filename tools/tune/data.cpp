// Problems, and the memory the tuner's kernels run on: huge pages, filled in ranges each
// tensor's role allows.
#include "data.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "options.h"

namespace bn2d::tune {

using namespace Halide;

std::vector<Shape> load_shapes(const std::string &file) {
    if (file.empty()) return bn2d::problems::load("suite");
    if (file.rfind("set:", 0) == 0) return bn2d::problems::load(file.substr(4));
    std::ifstream in(file);
    if (!in) usage_error("cannot read --shapes file '" + file + "'");
    std::vector<Shape> out;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line.substr(0, line.find('#')));
        std::string descriptor;
        if (words >> descriptor) out.push_back(bn2d::problems::parse_descriptor(descriptor));
    }
    if (out.empty()) usage_error("no problem in --shapes file '" + file + "'");
    return out;
}

int dtype_bytes(const std::string &d) { return d == "f64" ? 8 : d == "f32" ? 4 : 2; }

Memory Memory::allocate(size_t n) {
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t align = n >= kHuge ? kHuge : 64;
    Memory m;
    m.size = (std::max<size_t>(n, 1) + align - 1) / align * align;
    m.bytes.reset(static_cast<uint8_t *>(std::aligned_alloc(align, m.size)), std::free);
    if (!m.bytes) throw std::bad_alloc();
    if (align == kHuge) madvise(m.bytes.get(), m.size, MADV_HUGEPAGE);  // a hint; may fail
    return m;
}

void fill_random(const Memory &m, size_t count, Type type, const std::string &name, uint32_t seed) {
    std::mt19937 rng(seed ^ static_cast<uint32_t>(std::hash<std::string>()(name)));
    float lo = -2.0f, hi = 2.0f;
    if (name == "stat" || name == "running_var") lo = 0.5f, hi = 2.0f;
    if (name == "weight") lo = 0.5f, hi = 1.5f;
    std::uniform_real_distribution<float> dist(lo, hi);
    // Generating 25M values with mt19937 takes a while: a pattern of 4096 values, each copy
    // offset, keeps the tensor varied and cheap to fill.
    std::vector<float> pattern(4096);
    for (float &v : pattern) {
        v = dist(rng);
        if (v == 0.0f) v = 0.25f;
    }
    uint8_t *p = m.bytes.get();
    for (size_t i = 0; i < count; ++i) {
        const float v = pattern[i % 4096] + 1e-3f * static_cast<float>((i / 4096) % 7);
        if (type == Float(32))
            reinterpret_cast<float *>(p)[i] = v;
        else if (type == Float(64))
            reinterpret_cast<double *>(p)[i] = v;
        else if (type == Float(16))
            reinterpret_cast<uint16_t *>(p)[i] = float16_t(v).to_bits();
        else
            reinterpret_cast<uint16_t *>(p)[i] = bfloat16_t(v).to_bits();  // bf16 as uint16
    }
}

double element(const Runtime::Buffer<> &b, size_t i) {
    const uint8_t *p = static_cast<const uint8_t *>(b.data());
    const Type t = b.type();
    if (t == Float(32)) return reinterpret_cast<const float *>(p)[i];
    if (t == Float(64)) return reinterpret_cast<const double *>(p)[i];
    const uint16_t bits = reinterpret_cast<const uint16_t *>(p)[i];
    if (t == Float(16)) return static_cast<float>(float16_t::make_from_bits(bits));
    return static_cast<float>(bfloat16_t::make_from_bits(bits));
}

std::vector<halide_dimension_t> tensor_dims(const Shape &s, const std::string &view) {
    const int N = int(s.n), C = int(s.c), H = int(s.h), W = int(s.w), HW = H * W;
    const int total = int(std::min<int64_t>(s.numel(), INT32_MAX));
    if (view == "nhwc")
        return {{0, N * HW, C, 0}, {0, 1, total, 0}, {0, C, 1, 0}, {0, 1, total, 0}};
    if (view == "nchw4d") return {{0, W, 1, 0}, {0, H, W, 0}, {0, C, HW, 0}, {0, N, C * HW, 0}};
    if (view == "nhwc4d") return {{0, W, C, 0}, {0, H, W * C, 0}, {0, C, 1, 0}, {0, N, HW * C, 0}};
    return {{0, HW, 1, 0}, {0, 1, HW, 0}, {0, C, HW, 0}, {0, N, C * HW, 0}};
}

}  // namespace bn2d::tune
