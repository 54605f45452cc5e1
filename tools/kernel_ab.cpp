// kernel_ab: two builds (a, b) of the CPU kernels of training forward and training backward
// (f32 NCHW), called directly and alternated with the floor in one process, so that the ratio
// between them is free of the machine's drift. Each build comes with and without streaming
// stores; a shape whose rows are whole 64-byte lines runs the streaming one, as the runtime
// would. scripts/kernel_ab.sh builds the kernels (AB_FORWARD, AB_LABEL_A/B, AB_RELU_B: call
// build b's backward with the ReLU's mask on) and runs this; docs/usage.md quotes it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "HalideBuffer.h"
#include "ab_bwd_a_nt.h"
#include "ab_bwd_a_plain.h"
#include "ab_bwd_b_nt.h"
#include "ab_bwd_b_plain.h"
#if AB_FORWARD
#include "ab_fwd_a_nt.h"
#include "ab_fwd_a_plain.h"
#include "ab_fwd_b_nt.h"
#include "ab_fwd_b_plain.h"
#endif
#include "stream_floor.h"

namespace {

using Halide::Runtime::Buffer;
using Clock = std::chrono::steady_clock;
using Run = std::pair<std::string, std::function<void()>>;

// 64-byte aligned storage (streaming stores need lines), filled with fresh random values.
struct Lines {
    explicit Lines(size_t n, std::mt19937 &rng)
        : p(static_cast<float *>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {
        std::uniform_real_distribution<float> d(-2.f, 3.f);
        for (size_t i = 0; i < n; ++i) p[i] = d(rng);
    }
    ~Lines() { std::free(p); }
    float *p;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

void check(int rc, const char *what) {
    if (rc != 0) {
        std::fprintf(stderr, "%s failed: %d\n", what, rc);
        std::exit(1);
    }
}

// Medians of `reps` rounds, each running every entry once in a rotated order; ratios to the
// first entry (the floor).
void measure(const char *op, const std::vector<Run> &runs, int reps, const std::string &shape) {
    std::vector<std::vector<double>> ms(runs.size());
    for (int r = 0; r < reps; ++r) {
        for (size_t i = 0; i < runs.size(); ++i) {
            const size_t k = (i + r) % runs.size();
            const auto t = Clock::now();
            runs[k].second();
            ms[k].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
        }
    }
    const double floor_ms = median(ms[0]);
    for (size_t k = 0; k < runs.size(); ++k)
        std::printf("%s %s %-14s %8.3f ms  %.2fx floor\n", op, shape.c_str(), runs[k].first.c_str(),
                    median(ms[k]), median(ms[k]) / floor_ms);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: kernel_ab N C H W [repetitions]\n");
        return 2;
    }
    const int N = std::atoi(argv[1]), C = std::atoi(argv[2]), H = std::atoi(argv[3]),
              W = std::atoi(argv[4]), reps = argc > 5 ? std::atoi(argv[5]) : 31;
    const size_t n = size_t(N) * C * H * W;
    const std::string shape = std::to_string(N) + "x" + std::to_string(C) + "x" +
                              std::to_string(H) + "x" + std::to_string(W);
    const bool streaming = (size_t(H) * W * sizeof(float)) % 64 == 0;
    std::mt19937 rng(std::random_device{}());
    Lines x(n, rng), dy(n, rng), out(n, rng), y(n, rng);
    for (size_t i = 0; i < n; ++i) y.p[i] = std::max(y.p[i], 0.f);  // a ReLU's output: 40% zeros
    // A dense plane is one row of H*W values, as the runtime passes it.
    Buffer<float> xb(x.p, {H * W, 1, C, N}), dyb(dy.p, {H * W, 1, C, N}),
        ob(out.p, {H * W, 1, C, N}), yb(y.p, {H * W, 1, C, N});
    Buffer<float> weight(C), mean(C), invstd(C), zeros(C), s1(C), s2(C);
    weight.fill(1.5f), mean.fill(0.5f), invstd.fill(0.7f), zeros.fill(0.f);
    bn2d::bench::StreamPool pool(static_cast<int>(std::thread::hardware_concurrency()));

    // Without the ReLU the kernel never reads its y argument (the switch's specialization).
    auto backward = [&](decltype(&ab_bwd_a_nt) kernel, const char *what, bool relu = false) {
        return [&, kernel, what, relu] {
            check(kernel(xb, dyb, relu ? yb : dyb, mean, invstd, 1e-5, relu, weight, zeros, zeros,
                         ob, s1, s2),
                  what);
        };
    };
#if AB_FORWARD
    Buffer<float> bias(C), rmean(C), rvar(C), s3(C), s4(C);
    bias.fill(0.25f), rmean.fill(0.f), rvar.fill(1.f);
    auto forward = [&](decltype(&ab_fwd_a_nt) kernel, const char *what) {
        return [&, kernel, what] {
            check(kernel(xb, xb, weight, bias, rmean, rvar, 1e-5, false, false, 0.1, ob, s1, s2, s3,
                         s4),
                  what);
        };
    };
    measure("train_fwd",
            {{"floor",
              [&] { pool.run(x.p, nullptr, out.p, n, 2.f, 1.f, bn2d::bench::Stores::streaming); }},
             {AB_LABEL_A, forward(streaming ? ab_fwd_a_nt : ab_fwd_a_plain, "fwd a")},
             {AB_LABEL_B, forward(streaming ? ab_fwd_b_nt : ab_fwd_b_plain, "fwd b")}},
            reps, shape);
#endif
    measure("train_bwd",
            {{"floor",
              [&] { pool.run(x.p, dy.p, out.p, n, 2.f, 1.f, bn2d::bench::Stores::streaming); }},
             {AB_LABEL_A, backward(streaming ? ab_bwd_a_nt : ab_bwd_a_plain, "bwd a")},
             {AB_LABEL_B, backward(streaming ? ab_bwd_b_nt : ab_bwd_b_plain, "bwd b", AB_RELU_B)}},
            reps, shape);
    return 0;
}
