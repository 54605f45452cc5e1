// CPU benchmarks, one binary: for each suite shape (NCHW float32) and op (training forward,
// eval forward, backward), ours against the streaming bound (the same bytes moved by a trivial
// multiply-add on all cores), oneDNN in NCHW and NHWC, libtorch, and a naive two-pass loop.
// Names read op/implementation/shape; bytes per second count the bytes the op must move:
// forward 2 tensors (read x, write y), backward 3 (read x and dy, write dx).
//   --bn2d_threads=N (or BN2D_BENCH_THREADS) sets the thread count of every implementation.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bn2d/bn2d.h"
#include "suite.h"

#if BN2D_BENCH_ONEDNN
#include <dnnl.hpp>
#endif
#if BN2D_BENCH_TORCH
#include <ATen/ATen.h>
#include <torch/torch.h>
#endif

namespace {

using bn2d::bench::Op;
using bn2d::bench::op_bytes;
using bn2d::bench::op_name;
using bn2d::bench::Shape;

int g_threads = 0;  // resolved in main

// Random data; a fresh seed per tensor, never zeros.
std::vector<float> random_data(int64_t n, unsigned seed, float mean = 0.3f, float stddev = 1.5f) {
    std::vector<float> v(static_cast<size_t>(n));
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(mean, stddev);
    for (float &x : v) x = d(rng);
    return v;
}

void finish(benchmark::State &state, Op op, const Shape &s) {
    state.SetBytesProcessed(state.iterations() * op_bytes(op, s));
    state.counters["threads"] = g_threads;
}

// ---- ours ----
void bench_ours(benchmark::State &state, Op op, Shape s) {
    std::vector<float> x = random_data(s.numel(), 1), y(s.numel()), dy = random_data(s.numel(), 2),
                       dx(s.numel());
    auto view = [&](std::vector<float> &v) { return bn2d::Tensor::nchw(v.data(), s.n, s.c, s.h, s.w); };
    bn2d::BatchNorm2d bn(s.c);
    if (op == Op::EvalFwd) bn.eval();
    bn.forward(view(x), view(y));
    for (auto _ : state) {
        if (op == Op::Bwd) {
            bn.backward(view(dy), view(dx));
        } else {
            bn.forward(view(x), view(y));
        }
        benchmark::ClobberMemory();
    }
    finish(state, op, s);
    state.SetLabel(bn2d::isa_name(bn2d::last_cpu_isa_used()));
}

// ---- the streaming bound: the op's bytes, one multiply-add per element, all cores ----
void bench_bound(benchmark::State &state, Op op, Shape s) {
    const int64_t n = s.numel();
    std::vector<float> x = random_data(n, 1), dy = random_data(n, 2), out(n);
    const float *px = x.data(), *pdy = dy.data();
    float *po = out.data();
    float a = 1.0001f, b = 0.5f;
    for (auto _ : state) {
        if (op == Op::Bwd) {
#pragma omp parallel for simd num_threads(g_threads) schedule(static)
            for (int64_t i = 0; i < n; ++i) po[i] = a * px[i] + b * pdy[i];
        } else {
#pragma omp parallel for simd num_threads(g_threads) schedule(static)
            for (int64_t i = 0; i < n; ++i) po[i] = a * px[i] + b;
        }
        benchmark::ClobberMemory();
        a += 1e-7f;
    }
    finish(state, op, s);
}

// ---- naive: single-threaded two-pass, what one writes first ----
void bench_naive(benchmark::State &state, Op op, Shape s) {
    std::vector<float> x = random_data(s.numel(), 1), dy = random_data(s.numel(), 2), out(s.numel());
    std::vector<float> mean(s.c), invstd(s.c, 1.0f), w(s.c, 1.0f), b(s.c, 0.0f);
    const int64_t hw = s.h * s.w;
    const double m = double(s.n * hw);
    auto stats = [&] {
        for (int64_t c = 0; c < s.c; ++c) {
            double sum = 0, sq = 0;
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < hw; ++i) sum += x[(n * s.c + c) * hw + i];
            const double mu = sum / m;
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < hw; ++i) {
                    const double d = x[(n * s.c + c) * hw + i] - mu;
                    sq += d * d;
                }
            mean[c] = float(mu);
            invstd[c] = float(1.0 / std::sqrt(sq / m + 1e-5));
        }
    };
    std::vector<float> k_dy(s.c), k_x(s.c), k_0(s.c);  // backward: dx = dy*k_dy + (x-mean)*k_x + k_0
    auto grad_coefficients = [&] {
        for (int64_t c = 0; c < s.c; ++c) {
            double sdy = 0, sdyx = 0;
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < hw; ++i) {
                    const int64_t j = (n * s.c + c) * hw + i;
                    sdy += dy[j];
                    sdyx += dy[j] * (x[j] - mean[c]);
                }
            const double g = invstd[c] * w[c];
            k_dy[c] = float(g);
            k_x[c] = float(-g * sdyx * invstd[c] * invstd[c] / m);
            k_0[c] = float(-g * sdy / m);
        }
    };
    if (op == Op::Bwd) stats();  // the forward's saved statistics
    for (auto _ : state) {
        if (op == Op::TrainFwd) stats();
        if (op == Op::Bwd) grad_coefficients();
        for (int64_t n = 0; n < s.n; ++n)
            for (int64_t c = 0; c < s.c; ++c) {
                const int64_t base = (n * s.c + c) * hw;
                if (op == Op::Bwd) {
                    for (int64_t i = 0; i < hw; ++i)
                        out[base + i] = dy[base + i] * k_dy[c] + (x[base + i] - mean[c]) * k_x[c] + k_0[c];
                } else {
                    for (int64_t i = 0; i < hw; ++i)
                        out[base + i] = (x[base + i] - mean[c]) * invstd[c] * w[c] + b[c];
                }
            }
        benchmark::ClobberMemory();
    }
    finish(state, op, s);
}

#if BN2D_BENCH_ONEDNN
// ---- oneDNN, NCHW or NHWC ----
void bench_onednn(benchmark::State &state, Op op, Shape s, bool nhwc) {
    using namespace dnnl;
    using tag = memory::format_tag;
    engine eng(engine::kind::cpu, 0);
    stream strm(eng);
    memory::desc md({s.n, s.c, s.h, s.w}, memory::data_type::f32, nhwc ? tag::nhwc : tag::nchw);
    memory::desc cd({s.c}, memory::data_type::f32, tag::x);
    std::vector<float> x = random_data(s.numel(), 1), y(s.numel()), dy = random_data(s.numel(), 2),
                       dx(s.numel()), mean = random_data(s.c, 3), var(s.c, 1.0f),
                       scale(s.c, 1.0f), shift(s.c, 0.0f), dscale(s.c), dshift(s.c);
    auto mem = [&](const memory::desc &d, std::vector<float> &v) { return memory(d, eng, v.data()); };
    const auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
    const float eps = 1e-5f;
    auto fwd_train_pd = batch_normalization_forward::primitive_desc(
        batch_normalization_forward::desc(prop_kind::forward_training, md, eps, flags), eng);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, mem(md, x)},        {DNNL_ARG_DST, mem(md, y)},
        {DNNL_ARG_MEAN, mem(cd, mean)},    {DNNL_ARG_VARIANCE, mem(cd, var)},
        {DNNL_ARG_SCALE, mem(cd, scale)},  {DNNL_ARG_SHIFT, mem(cd, shift)}};
    primitive prim;
    if (op == Op::TrainFwd) {
        prim = batch_normalization_forward(fwd_train_pd);
    } else if (op == Op::EvalFwd) {
        prim = batch_normalization_forward(batch_normalization_forward::primitive_desc(
            batch_normalization_forward::desc(prop_kind::forward_inference, md, eps,
                                              flags | normalization_flags::use_global_stats),
            eng));
    } else {
        batch_normalization_forward(fwd_train_pd).execute(strm, args);  // mean/var for backward
        auto bwd_pd = batch_normalization_backward::primitive_desc(
            batch_normalization_backward::desc(prop_kind::backward, md, md, eps, flags), eng,
            fwd_train_pd);
        prim = batch_normalization_backward(bwd_pd);
        args = {{DNNL_ARG_SRC, mem(md, x)},         {DNNL_ARG_DIFF_DST, mem(md, dy)},
                {DNNL_ARG_MEAN, mem(cd, mean)},     {DNNL_ARG_VARIANCE, mem(cd, var)},
                {DNNL_ARG_SCALE, mem(cd, scale)},   {DNNL_ARG_SHIFT, mem(cd, shift)},
                {DNNL_ARG_DIFF_SRC, mem(md, dx)},
                {DNNL_ARG_DIFF_SCALE, mem(cd, dscale)}, {DNNL_ARG_DIFF_SHIFT, mem(cd, dshift)}};
    }
    for (auto _ : state) {
        prim.execute(strm, args);
        strm.wait();
    }
    finish(state, op, s);
    state.SetLabel(nhwc ? "nhwc" : "nchw");
}
#endif

#if BN2D_BENCH_TORCH
// ---- libtorch CPU (1.13 has no CPU native_batch_norm.out: the output is allocated per call,
// as it is for PyTorch users) ----
void bench_torch(benchmark::State &state, Op op, Shape s) {
    torch::NoGradGuard no_grad;
    std::vector<float> xv = random_data(s.numel(), 1), dyv = random_data(s.numel(), 2);
    at::Tensor x = torch::from_blob(xv.data(), {s.n, s.c, s.h, s.w});
    at::Tensor dy = torch::from_blob(dyv.data(), {s.n, s.c, s.h, s.w});
    at::Tensor w = torch::ones({s.c}), b = torch::zeros({s.c});
    at::Tensor rm = torch::zeros({s.c}), rv = torch::ones({s.c});
    at::Tensor y, save_mean, save_invstd;
    std::tie(y, save_mean, save_invstd) = at::native_batch_norm(x, w, b, rm, rv, true, 0.1, 1e-5);
    for (auto _ : state) {
        if (op == Op::Bwd) {
            auto g = at::native_batch_norm_backward(dy, x, w, rm, rv, save_mean, save_invstd, true,
                                                    1e-5, {true, true, true});
            benchmark::DoNotOptimize(std::get<0>(g).data_ptr());
        } else {
            auto r = at::native_batch_norm(x, w, b, rm, rv, op == Op::TrainFwd, 0.1, 1e-5);
            benchmark::DoNotOptimize(std::get<0>(r).data_ptr());
        }
        benchmark::ClobberMemory();
    }
    finish(state, op, s);
}
#endif

void register_all() {
    for (const Shape &s : bn2d::bench::suite_shapes())
        for (Op op : bn2d::bench::kOps) {
            const std::string tail = "/" + s.name();
            auto reg = [&](const std::string &impl, auto fn, auto... extra) {
                benchmark::RegisterBenchmark((std::string(op_name(op)) + "/" + impl + tail).c_str(),
                                             fn, op, s, extra...)
                    ->UseRealTime()
                    ->Unit(benchmark::kMillisecond);
            };
            reg("ours", bench_ours);
            reg("bound", bench_bound);
#if BN2D_BENCH_ONEDNN
            reg("onednn_nchw", bench_onednn, false);
            reg("onednn_nhwc", bench_onednn, true);
#endif
#if BN2D_BENCH_TORCH
            reg("torch", bench_torch);
#endif
            reg("naive", bench_naive);
        }
}

}  // namespace

int main(int argc, char **argv) {
    // Our own flag first: --bn2d_threads=N; else BN2D_BENCH_THREADS; else all cores.
    std::vector<char *> rest;
    for (int i = 0; i < argc; ++i) {
        if (std::strncmp(argv[i], "--bn2d_threads=", 15) == 0) {
            g_threads = std::atoi(argv[i] + 15);
        } else {
            rest.push_back(argv[i]);
        }
    }
    if (g_threads <= 0 && std::getenv("BN2D_BENCH_THREADS"))
        g_threads = std::atoi(std::getenv("BN2D_BENCH_THREADS"));
    if (g_threads <= 0) g_threads = omp_get_num_procs();
    bn2d::set_num_threads(g_threads);
    omp_set_num_threads(g_threads);
#if BN2D_BENCH_TORCH
    torch::set_num_threads(g_threads);
#endif
    int rest_argc = static_cast<int>(rest.size());
    benchmark::Initialize(&rest_argc, rest.data());
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
