// Shared test helpers: the shape list, random data, poisoning, comparisons with messages that
// name the element.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bn2d/bn2d.h"
#include "reference.h"
#include "typed_tensor.h"

namespace bn2d::test {

using reference::Shape;

inline std::string name(const Shape &s) { return s.name(); }

// The reference grid of tests/problems.txt: the seed, C = 1, H = W = 1, N = 1, primes, W under
// a vector, and one larger than L2.
inline std::vector<Shape> grid_shapes() { return problems::load("grid"); }

inline Tensor view(std::vector<float> &v, const Shape &s) {
    return Tensor::nchw(v.data(), s.n, s.c, s.h, s.w);
}

// Fresh random data: normal(mean, stddev), never all zeros.
inline std::vector<float> random_vector(std::mt19937 &rng, int64_t n, float mean = 0.0f,
                                        float stddev = 1.0f) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(static_cast<size_t>(n));
    for (float &x : v) x = d(rng);
    return v;
}

inline std::vector<double> to_f64(const std::vector<float> &v) {
    return std::vector<double>(v.begin(), v.end());
}

// Random data with non-finite values, one case per channel of a 7-channel shape: 0 clean,
// 1 a NaN, 2 a +Inf, 3 a -Inf, 4 both infinities, 5 a NaN first sample, 6 a +Inf first sample
// (the first sample is the shift sample of the statistics).
inline std::vector<float> non_finite_input(std::mt19937 &rng, const Shape &s);

// An address-space reservation of `floats` floats (MAP_NORESERVE): only the pages a view
// touches are materialized, so a view may span 2^31 elements and more. data() is null if the
// reservation failed.
class Reservation {
public:
    explicit Reservation(int64_t floats) : bytes_(static_cast<size_t>(floats) * sizeof(float)) {
        void *p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        data_ = p == MAP_FAILED ? nullptr : static_cast<float *>(p);
    }
    ~Reservation() {
        if (data_) munmap(data_, bytes_);
    }
    Reservation(const Reservation &) = delete;
    Reservation &operator=(const Reservation &) = delete;
    float *data() const { return data_; }

private:
    size_t bytes_;
    float *data_;
};

inline std::vector<float> poisoned(int64_t n) {
    return std::vector<float>(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
}

inline std::string where(const Shape &s, int64_t i) {
    const int64_t w = i % s.w, h = (i / s.w) % s.h, c = (i / (s.w * s.h)) % s.c,
                  n = i / (s.w * s.h * s.c);
    return "at n,c,h,w = " + std::to_string(n) + "," + std::to_string(c) + "," + std::to_string(h) +
           "," + std::to_string(w);
}

// |got - want| <= atol + rtol * |want| for every element, and every element written (no NaN).
// Reports the first few failures with their position.
template<typename Got, typename Want, typename Where>
::testing::AssertionResult all_close(const Got &got, const Want &want, double atol, double rtol,
                                     Where &&where_of) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
    int bad = 0;
    ::testing::AssertionResult r = ::testing::AssertionFailure();
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = got[i], w = want[i];
        if (std::isnan(g) || std::abs(g - w) > atol + rtol * std::abs(w)) {
            if (bad < 5)
                r << where_of(static_cast<int64_t>(i)) << ": got " << g << ", want " << w
                  << " (diff " << std::abs(g - w) << ")\n";
            ++bad;
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return r << bad << " of " << got.size() << " elements differ";
}

inline std::vector<float> non_finite_input(std::mt19937 &rng, const Shape &s) {
    if (s.c != 7 || s.n < 2 || s.h < 3 || s.w < 4)
        throw std::invalid_argument("non_finite_input: needs [>=2, 7, >=3, >=4]");
    std::vector<float> x = random_vector(rng, s.numel(), 0.5f, 1.5f);
    const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
    x[s.index(1, 1, 2, 1)] = nan;
    x[s.index(0, 2, 1, 3)] = inf;
    x[s.index(1, 3, 0, 2)] = -inf;
    x[s.index(0, 4, 2, 2)] = inf;
    x[s.index(1, 4, 1, 0)] = -inf;
    x[s.index(0, 5, 0, 0)] = nan;
    x[s.index(0, 6, 0, 0)] = inf;
    return x;
}

// As all_close, but NaN must meet NaN and an infinity the same infinity (for inputs with NaN
// and Inf, whose propagation is part of the semantics).
template<typename Got, typename Want>
::testing::AssertionResult same_with_non_finite(const Got &got, const Want &want, double atol,
                                                double rtol) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
    int bad = 0;
    ::testing::AssertionResult r = ::testing::AssertionFailure();
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = got[i], w = want[i];
        const bool ok = std::isnan(w) ? std::isnan(g)
                        : std::isinf(w)
                            ? g == w
                            : std::isfinite(g) && std::abs(g - w) <= atol + rtol * std::abs(w);
        if (!ok) {
            if (bad < 5) r << "at index " << i << ": got " << g << ", want " << w << "\n";
            ++bad;
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return r << bad << " of " << got.size() << " elements differ";
}

template<typename Got, typename Want>
::testing::AssertionResult all_close(const Got &got, const Want &want, double atol, double rtol) {
    return all_close(got, want, atol, rtol,
                     [](int64_t i) { return "at index " + std::to_string(i); });
}

inline std::vector<float> to_vector(const Tensor &t) {
    if (!t.defined()) return {};
    return std::vector<float>(t.data(), t.data() + t.numel());
}

// A contiguous float32 or float64 host tensor (module storage views), as float64.
inline std::vector<double> to_vector_f64(const Tensor &t) {
    if (!t.defined()) return {};
    if (t.dtype() == DType::float64)
        return std::vector<double>(t.data<double>(), t.data<double>() + t.numel());
    return std::vector<double>(t.data(), t.data() + t.numel());
}

// A float64 reference module with the same options (eps, momentum, affine, tracking, mode).
inline reference::Module reference_like(const BatchNorm2d &bn) {
    reference::Module ref(bn.num_features());
    ref.eps = bn.eps();
    ref.momentum = bn.momentum();
    ref.affine = bn.affine();
    ref.track = bn.track_running_stats();
    ref.training = bn.is_training();
    return ref;
}

// Copies parameters of the reference into the module (weight/bias random, so affine matters).
inline void randomize_parameters(std::mt19937 &rng, BatchNorm2d &bn, reference::Module &ref) {
    const int64_t C = bn.num_features();
    std::vector<float> w = random_vector(rng, C, 1.0f, 0.3f), b = random_vector(rng, C, 0.0f, 0.5f);
    StateDict d = bn.state_dict();
    if (bn.affine()) {
        d.weight.assign(w.begin(), w.end());
        d.bias.assign(b.begin(), b.end());
        ref.weight.assign(w.begin(), w.end());
        ref.bias.assign(b.begin(), b.end());
    }
    bn.load_state_dict(d);
}

// Backward tolerances, shared by every backward check. grad_input is a float32 combination of
// dy and x_hat scaled by invstd * weight: its error is a few ulps of the largest term, so the
// absolute tolerance scales with the largest reference value. Parameter gradients are sums over
// M = N*H*W terms accumulated in float64 from float32 products: their error grows like sqrt(M)
// ulps of a term.
inline double input_grad_atol(const std::vector<double> &want) {
    double m = 0;
    for (double v : want) m = std::max(m, std::abs(v));
    return 2e-6 * (1.0 + m);
}
inline double param_grad_atol(const Shape &s) {
    return 2e-6 * (1.0 + std::sqrt(double(s.per_channel())));
}

// Bitwise equality of two vectors (NaN payloads and signed zeros included); empty ones are
// equal without touching their null data.
template<typename T>
bool bitwise_equal(const std::vector<T> &a, const std::vector<T> &b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Whether two state dicts hold bitwise the same values.
inline bool same_state(const StateDict &a, const StateDict &b) {
    return bitwise_equal(a.weight, b.weight) && bitwise_equal(a.bias, b.bias) &&
           bitwise_equal(a.running_mean, b.running_mean) &&
           bitwise_equal(a.running_var, b.running_var) &&
           a.num_batches_tracked == b.num_batches_tracked;
}

// "" if this build has kernels for the dtype, else why not (BN2D_ONLY_DTYPES left it out, as
// the sanitizer builds do): tests of that dtype skip with the reason.
inline std::string dtype_not_built(DType t) {
    const std::string tag = std::string("_") + dtype_short_name(t) + "_";
    for (const std::string &k : build_info().kernels)
        if (k.find(tag) != std::string::npos) return "";
    return std::string(dtype_name(t)) + " kernels are not in this build (BN2D_ONLY_DTYPES)";
}

// A SyncBatchNorm2d group of one process, without MPI: the collectives are copies.
class SingleProcessGroup final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    std::string name() const override { return "single process"; }
    Device memory() const override { return Device::CPU; }
    void all_gather_bytes(const void *send, void *recv, size_t bytes) override {
        std::memcpy(recv, send, bytes);
    }
    void all_gather(const double *send, double *recv, size_t count) override {
        std::memcpy(recv, send, count * sizeof(double));
    }
    void all_reduce_sum(double *, size_t) override {}
};

// Every output mask backward() accepts that computes something.
// Sets the CPU strategy for a scope (bn2d::set_cpu_strategy), restoring the one before.
class StrategyGuard {
public:
    explicit StrategyGuard(CpuStrategy s) : saved_(cpu_strategy()) { set_cpu_strategy(s); }
    ~StrategyGuard() { set_cpu_strategy(saved_); }
    StrategyGuard(const StrategyGuard &) = delete;
    StrategyGuard &operator=(const StrategyGuard &) = delete;

private:
    CpuStrategy saved_;
};

inline std::vector<BackwardMask> all_masks() {
    return {BackwardMask{true, true}, BackwardMask{true, false}, BackwardMask{false, true}};
}
inline std::string mask_name(const BackwardMask &m) {
    return std::string("mask input=") + (m.input ? "1" : "0") + " params=" + (m.params ? "1" : "0");
}

}  // namespace bn2d::test

namespace bn2d::test {

// The bn2d_verbose lines (one per kernel call) that `calls` prints with verbose mode on.
template<typename Calls>
std::vector<std::string> verbose_lines_of(Calls &&calls) {
    set_verbose(true);
    ::testing::internal::CaptureStderr();
    calls();
    const std::string err = ::testing::internal::GetCapturedStderr();
    set_verbose(false);
    std::vector<std::string> lines;
    std::istringstream in(err);
    for (std::string line; std::getline(in, line);)
        if (line.rfind("bn2d_verbose,", 0) == 0) lines.push_back(line);
    return lines;
}

// Runs forward and backward with every output mask, in training and in eval mode, on `device`
// with verbose mode on, and returns the bn2d_verbose lines printed (one per kernel call).
// `layout`: a tests/typed_tensor.h memory layout (nchw, nhwc, padded) for every tensor.
// With `sync`, a SyncBatchNorm2d in a group of one process, training forward and backward:
// sync_stats, sync_merge, eval_fwd, train_bwd_params, sync_bwd_input.
inline std::vector<std::string> verbose_lines_of_every_op(Device device,
                                                          DType dtype = DType::float32,
                                                          const std::string &layout = "nchw",
                                                          bool sync = false) {
    const Shape s{2, 16, 4, 5};  // 16 channels: channels_last runs the nhwc kernels
    std::mt19937 rng(7);
    Options o;
    o.dtype = dtype == DType::float64 ? DType::float64 : DType::float32;
    std::unique_ptr<BatchNorm2d> module =
        sync ? std::make_unique<SyncBatchNorm2d>(s.c, std::make_shared<SingleProcessGroup>(), o)
             : std::make_unique<BatchNorm2d>(s.c, o);
    BatchNorm2d &bn = *module;
    bn.to(device);
    TypedTensor hx(dtype, s, layout), hy(dtype, s, layout), hdy(dtype, s, layout);
    hx.randomize(rng);
    hdy.randomize(rng);
    DeviceBuffer x = hx.device_buffer(device), y = hy.device_buffer(device),
                 dy = hdy.device_buffer(device), dx = hy.device_buffer(device);
    hx.upload(x);
    hdy.upload(dy);
    return verbose_lines_of([&] {
        if (sync) {
            bn.forward(hx.device_view(x), hy.device_view(y));
            bn.backward(hdy.device_view(dy), hy.device_view(dx));
            return;
        }
        for (bool training : {true, false}) {
            bn.train(training);
            for (const BackwardMask &m : all_masks()) {
                bn.forward(hx.device_view(x), hy.device_view(y));
                bn.backward(hdy.device_view(dy), m.input ? hy.device_view(dx) : Tensor(), m);
            }
        }
    });
}

inline std::vector<std::string> split(const std::string &s, char sep) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string field; std::getline(in, field, sep);) out.push_back(field);
    return out;
}

}  // namespace bn2d::test
