// prefetch_ab: the CPU kernels of training forward and training backward (f32 NCHW, streaming
// stores) built with two machine files that differ only in `pipelined_groups` (1: no prefetch
// of the next channel group; 4: the default for training forward), called directly and
// alternated with the floor in one process, so that the ratio between them is free of the
// machine's drift. scripts/prefetch_ab.sh builds and runs it; the README's "Prefetching the
// next channel group" quotes it.
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
#include "ab_bwd_pg1.h"
#include "ab_bwd_pg4.h"
#include "ab_fwd_pg1.h"
#include "ab_fwd_pg4.h"
#include "stream_floor.h"

namespace {

using Halide::Runtime::Buffer;
using Clock = std::chrono::steady_clock;

// 64-byte aligned storage (streaming stores need lines), filled with fresh random values.
struct Lines {
    explicit Lines(size_t n, std::mt19937 &rng) : p(static_cast<float *>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {
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

}  // namespace

int main(int argc, char **argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: prefetch_ab N C H W [repetitions]\n");
        return 2;
    }
    const int N = std::atoi(argv[1]), C = std::atoi(argv[2]), H = std::atoi(argv[3]),
              W = std::atoi(argv[4]), reps = argc > 5 ? std::atoi(argv[5]) : 31;
    const size_t n = size_t(N) * C * H * W;
    std::mt19937 rng(std::random_device{}());
    Lines x(n, rng), dy(n, rng), out(n, rng);
    // A dense plane is one row of H*W values, as the runtime passes it.
    Buffer<float> xb(x.p, {H * W, 1, C, N}), dyb(dy.p, {H * W, 1, C, N}), ob(out.p, {H * W, 1, C, N});
    Buffer<float> weight(C), bias(C), rmean(C), rvar(C), s1(C), s2(C), s3(C), s4(C);
    weight.fill(1.5f), bias.fill(0.25f), rmean.fill(0.f), rvar.fill(1.f);
    Buffer<float> mean(C), invstd(C), zeros(C);
    mean.fill(0.5f), invstd.fill(0.7f), zeros.fill(0.f);
    bn2d::bench::StreamPool pool(static_cast<int>(std::thread::hardware_concurrency()));

    const std::vector<std::pair<std::string, std::function<void()>>> fwd = {
        {"floor", [&] { pool.run(x.p, nullptr, out.p, n, 2.f, 1.f, bn2d::bench::Stores::streaming); }},
        {"no prefetch", [&] { check(ab_fwd_pg1(xb, xb, weight, bias, rmean, rvar, 1e-5, false, false, 0.1, ob, s1, s2, s3, s4), "fwd pg1"); }},
        {"prefetch", [&] { check(ab_fwd_pg4(xb, xb, weight, bias, rmean, rvar, 1e-5, false, false, 0.1, ob, s1, s2, s3, s4), "fwd pg4"); }}};
    const std::vector<std::pair<std::string, std::function<void()>>> bwd = {
        {"floor", [&] { pool.run(x.p, dy.p, out.p, n, 2.f, 1.f, bn2d::bench::Stores::streaming); }},
        {"no prefetch", [&] { check(ab_bwd_pg1(xb, dyb, dyb, mean, invstd, 1e-5, false, weight, zeros, zeros, ob, s1, s2), "bwd pg1"); }},
        {"prefetch", [&] { check(ab_bwd_pg4(xb, dyb, dyb, mean, invstd, 1e-5, false, weight, zeros, zeros, ob, s1, s2), "bwd pg4"); }}};
    for (const auto *op : {&fwd, &bwd}) {
        std::vector<std::vector<double>> ms(op->size());
        for (int r = 0; r < reps; ++r) {
            for (size_t i = 0; i < op->size(); ++i) {  // rotate the order every repetition
                const size_t k = (i + r) % op->size();
                const auto t = Clock::now();
                (*op)[k].second();
                ms[k].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
            }
        }
        const double fl = median(ms[0]);
        for (size_t k = 0; k < op->size(); ++k)
            std::printf("%s %dx%dx%dx%d %-12s %8.3f ms  %.2fx floor\n", op == &fwd ? "train_fwd" : "train_bwd",
                        N, C, H, W, (*op)[k].first.c_str(), median(ms[k]), median(ms[k]) / fl);
    }
    return 0;
}
