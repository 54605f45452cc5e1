// Tensors beyond 32-bit indexing: 2^31 elements or more, or views whose elements lie 2^31
// elements apart. The CPU runs the kernels built with Halide's large_buffers feature for them
// (LARGE_BUFFERS in generators/variants.cmake), and only for them: BN2D_VERBOSE names those
// kernels *_large. Sparse views live in address-space reservations (MAP_NORESERVE), so only the
// pages a view touches are ever materialized.
#include <fstream>
#include <thread>

#include "common.h"

namespace bn2d::test {
namespace {

constexpr int64_t k2To30 = int64_t(1) << 30;

// A strided view of shape s at base with the given strides, filled from a dense NCHW vector.
Tensor scatter(float *base, const Shape &s, const std::vector<int64_t> &strides,
               const std::vector<float> &dense) {
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t h = 0; h < s.h; ++h)
                for (int64_t w = 0; w < s.w; ++w)
                    base[n * strides[0] + c * strides[1] + h * strides[2] + w * strides[3]] =
                        dense[s.index(n, c, h, w)];
    return Tensor(base, {s.n, s.c, s.h, s.w}, strides);
}

std::vector<float> gather(const Tensor &t, const Shape &s) {
    std::vector<float> dense(s.numel());
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t h = 0; h < s.h; ++h)
                for (int64_t w = 0; w < s.w; ++w)
                    dense[s.index(n, c, h, w)] = t.data()[n * t.stride(0) + c * t.stride(1) +
                                                          h * t.stride(2) + w * t.stride(3)];
    return dense;
}

// The kernel and backend:isa fields of the BN2D_VERBOSE lines of the calls f makes.
template<typename F>
std::vector<std::pair<std::string, std::string>> kernels_run(F &&f) {
    set_verbose(true);
    ::testing::internal::CaptureStderr();
    f();
    const std::string err = ::testing::internal::GetCapturedStderr();
    set_verbose(false);
    std::vector<std::pair<std::string, std::string>> kernels;
    std::istringstream in(err);
    for (std::string line; std::getline(in, line);)
        if (line.rfind("bn2d_verbose,exec,", 0) == 0) {
            const std::vector<std::string> fields = split(line, ',');
            kernels.push_back({fields[3], fields[4]});
        }
    return kernels;
}

bool ends_with(const std::string &s, const std::string &tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Training forward, backward (x and grad_input as given, grad_out dense) and eval forward on
// x, checked against the float64 reference on the same values; every call must run a *_large
// kernel, and the same call on dense copies must not.
void expect_large_matches_reference(const Shape &s, const Tensor &x, const Tensor &dx,
                                    const std::vector<float> &x_dense, std::mt19937 &rng) {
    BatchNorm2d bn(s.c);
    reference::Module ref(s.c);
    randomize_parameters(rng, bn, ref);
    std::vector<float> y = poisoned(s.numel()), dy = random_vector(rng, s.numel());
    const auto large = kernels_run([&] {
        bn.forward(x, view(y, s));
        bn.backward(view(dy, s), dx);
    });
    const std::vector<double> y_ref = ref.forward(s, x_dense);
    EXPECT_TRUE(all_close(y, y_ref, 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
    const auto g = ref.backward(s, x_dense, dy);
    EXPECT_TRUE(all_close(gather(dx, s), g.input, input_grad_atol(g.input), 1e-5,
                          [&](int64_t i) { return where(s, i); }));
    EXPECT_TRUE(all_close(to_vector(bn.weight_grad()), g.weight, param_grad_atol(s), 1e-5));
    EXPECT_TRUE(all_close(to_vector(bn.bias_grad()), g.bias, param_grad_atol(s), 1e-5));
    EXPECT_TRUE(all_close(to_vector(bn.running_mean()), ref.running_mean, 1e-6, 1e-5));
    EXPECT_TRUE(all_close(to_vector(bn.running_var()), ref.running_var, 1e-6, 1e-5));
    bn.eval();
    ref.training = false;
    std::vector<float> y_eval = poisoned(s.numel());
    const auto large_eval = kernels_run([&] { bn.forward(x, view(y_eval, s)); });
    EXPECT_TRUE(all_close(y_eval, ref.forward(s, x_dense), 1e-5, 1e-5));

    ASSERT_EQ(large.size(), 2u);
    ASSERT_EQ(large_eval.size(), 1u);
    for (const auto &[kernel, isa] : {large[0], large[1], large_eval[0]})
        EXPECT_TRUE(ends_with(kernel, "_large")) << kernel << " " << isa;
    // The same values in dense memory: the 32-bit kernels.
    std::vector<float> xd = x_dense;
    const auto dense = kernels_run([&] { bn.forward(view(xd, s), view(y_eval, s)); });
    ASSERT_EQ(dense.size(), 1u);
    EXPECT_FALSE(ends_with(dense[0].first, "_large")) << dense[0].first;
}

// N stride 2^30: a view of 3 images spans 2^31 + ... elements. A 32-bit kernel cannot index it
// (before large_buffers kernels, this was rejected as "tensor too large").
TEST(LargeTensors, SparseViewSpanningMoreThan2To31Elements) {
    const Shape s{3, 4, 16, 32};
    const std::vector<int64_t> strides = {k2To30, s.h * s.w, s.w, 1};
    Reservation rx(2 * k2To30 + s.c * s.h * s.w), rdx(2 * k2To30 + s.c * s.h * s.w);
    if (!rx.data() || !rdx.data()) GTEST_SKIP() << "cannot reserve 2 x 8 GiB of address space";
    std::mt19937 rng(11);
    const std::vector<float> x_dense = random_vector(rng, s.numel(), 0.5f, 2.0f);
    const Tensor x = scatter(rx.data(), s, strides, x_dense);
    const Tensor dx = scatter(rdx.data(), s, strides, poisoned(s.numel()));
    expect_large_matches_reference(s, x, dx, x_dense, rng);
}

// Mixed-sign strides: each reach fits 31 bits (N: -2^30, C: 2^30 + 4096), the span does not.
// The old check tested the negative and positive reaches separately and let this through to a
// Halide error; it now runs the 64-bit kernels.
TEST(LargeTensors, MixedSignStridesSpanningMoreThan2To31Elements) {
    const Shape s{2, 2, 16, 64};
    const std::vector<int64_t> strides = {-k2To30, k2To30 + 4096, s.w, 1};
    Reservation rx(2 * k2To30 + 8192);
    if (!rx.data()) GTEST_SKIP() << "cannot reserve 8 GiB of address space";
    std::mt19937 rng(12);
    const std::vector<float> x_dense = random_vector(rng, s.numel(), -1.0f, 0.5f);
    const Tensor x = scatter(rx.data() + k2To30, s, strides, x_dense);  // n = 1 is at offset 0
    // (grad_input dense: the output check's stride-order rule would call these strides
    // overlapping, conservatively.)
    std::vector<float> dx = poisoned(s.numel());
    expect_large_matches_reference(s, x, view(dx, s), x_dense, rng);
}

// The large kernels follow the ISA cap: the best ISA with LARGE_BUFFERS at or below it.
TEST(LargeTensors, LargeKernelsFollowTheIsaCap) {
    const Shape s{3, 2, 4, 8};
    const std::vector<int64_t> strides = {k2To30, s.h * s.w, s.w, 1};
    Reservation rx(2 * k2To30 + s.c * s.h * s.w);
    if (!rx.data()) GTEST_SKIP() << "cannot reserve 8 GiB of address space";
    std::mt19937 rng(13);
    const Tensor x = scatter(rx.data(), s, strides, random_vector(rng, s.numel()));
    const CpuIsa saved = max_cpu_isa();
    const std::vector<CpuIsa> isas = compiled_cpu_isas();
    set_max_cpu_isa(isas.back());  // runs anywhere, and always has large kernels
    std::vector<float> y = poisoned(s.numel());
    BatchNorm2d bn(s.c);
    const auto run = kernels_run([&] { bn.forward(x, view(y, s)); });
    set_max_cpu_isa(saved);
    ASSERT_EQ(run.size(), 1u);
    EXPECT_EQ(run[0].second, std::string("cpu:") + isa_name(isas.back()));
    EXPECT_TRUE(ends_with(run[0].first, "_large"));
}

int64_t mem_available_bytes() {
    std::ifstream in("/proc/meminfo");
    for (std::string key; in >> key;) {
        int64_t kb = 0;
        in >> kb;
        if (key == "MemAvailable:") return kb * 1024;
        in.ignore(256, '\n');
    }
    return 0;
}

// Runs body(begin, end) over [0, n) on two threads.
template<typename F>
void in_halves(int64_t n, F &&body) {
    std::thread t([&] { body(0, n / 2); });
    body(n / 2, n);
    t.join();
}

// A real dense batch of more than 2^31 elements, one channel (M = N*H*W > 2^31 too, so the
// per-channel count is 64-bit): [130, 1, 4096, 4096] bfloat16, 4.4 GB in and 4.4 GB out.
TEST(LargeTensors, DenseBatchOfMoreThan2To31Elements) {
    const Shape s{130, 1, 4096, 4096};
    const int64_t n = s.numel();
    ASSERT_GT(n, int64_t(1) << 31);
    if (mem_available_bytes() < 12 * (int64_t(1) << 30))
        GTEST_SKIP() << "needs 12 GiB of available memory (two 4.4 GB bfloat16 tensors)";
    std::vector<uint16_t> x(n), y(n, 0x7fc1);  // y: a NaN payload the kernel never writes
    // Fresh values: a per-run offset and a hash of the index, mean ~ offset, spread ~ 1.
    std::mt19937 rng(std::random_device{}());
    const float offset = std::uniform_real_distribution<float>(-3.0f, 3.0f)(rng);
    const uint64_t seed = rng();
    in_halves(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            uint64_t h = (uint64_t(i) + seed) * 0x9E3779B97F4A7C15ull;
            h ^= h >> 31;
            const float u = static_cast<float>(h & 0xffffff) / float(1 << 24);  // [0, 1)
            x[i] = bfloat16_from_float(offset + 3.4641f * (u - 0.5f));          // variance ~1
        }
    });
    BatchNorm2d bn(1);
    const Tensor tx(x.data(), DType::bfloat16, {s.n, s.c, s.h, s.w});
    const Tensor ty(y.data(), DType::bfloat16, {s.n, s.c, s.h, s.w});
    const auto run = kernels_run([&] { bn.forward(tx, ty); });
    ASSERT_EQ(run.size(), 1u);
    EXPECT_TRUE(ends_with(run[0].first, "_large")) << run[0].first;

    // The float64 statistics of the same values (two passes, per thread then combined).
    double sums[2] = {0, 0}, sq[2] = {0, 0};
    in_halves(n, [&](int64_t b, int64_t e) {
        double s1 = 0;
        for (int64_t i = b; i < e; ++i) s1 += float_from_bfloat16(x[i]);
        sums[b == 0 ? 0 : 1] = s1;
    });
    const double mean = (sums[0] + sums[1]) / double(n);
    in_halves(n, [&](int64_t b, int64_t e) {
        double s2 = 0;
        for (int64_t i = b; i < e; ++i) {
            const double d = float_from_bfloat16(x[i]) - mean;
            s2 += d * d;
        }
        sq[b == 0 ? 0 : 1] = s2;
    });
    const double var = (sq[0] + sq[1]) / double(n);
    const double invstd = 1.0 / std::sqrt(var + 1e-5);
    EXPECT_NEAR(bn.running_mean().data()[0], 0.1 * mean, 1e-6 * (1 + std::abs(mean)));
    EXPECT_NEAR(bn.running_var().data()[0], 0.9 + 0.1 * var * n / (n - 1), 1e-6);

    // Every output element written and within a bfloat16 rounding (2^-8 relative) of the
    // reference.
    int64_t bad[2] = {0, 0};
    in_halves(n, [&](int64_t b, int64_t e) {
        int64_t count = 0;
        for (int64_t i = b; i < e; ++i) {
            const double want = (float_from_bfloat16(x[i]) - mean) * invstd;
            const double got = float_from_bfloat16(y[i]);
            if (!(std::abs(got - want) <= 1e-3 + std::abs(want) * (1.0 / 256))) ++count;
        }
        bad[b == 0 ? 0 : 1] = count;
    });
    EXPECT_EQ(bad[0] + bad[1], 0) << "elements not written or off the reference";
}

}  // namespace
}  // namespace bn2d::test
