// CPU benchmarks, one binary: for each suite shape and op (training forward, eval forward,
// backward), ours in NCHW and NHWC (channels_last), float32 and bfloat16, against the floor and
// the peers:
//   floor   the op's bytes moved by a trivial multiply-add on all cores with streaming
//           (non-temporal) stores: the physical floor (ordinary stores read each output line
//           first, 3 bytes moved for every 2 the op needs)
//   bound   the same with ordinary stores, as every implementation here stores
//   ours_fused, ours_split: ours (NCHW float32 training) under one CPU strategy each
//   (bn2d::CpuStrategy; `ours` runs the automatic choice, or BN2D_CPU_STRATEGY's)
//   onednn_nchw, onednn_nhwc (float32), onednn_nhwc_bf16; torch (NCHW), torch_nhwc
//   (channels_last), torch_bf16; naive: a single-threaded two-pass loop (NCHW float32)
//
// Names read op/implementation/shape, e.g. train_fwd/ours_nhwc/20x100x35x45 (Google Benchmark
// adds /real_time); implementations without a layout suffix are NCHW float32, _bf16 ones
// bfloat16. Bytes per second count the bytes the op must move at its dtype (bench/suite.h):
// forward 2 tensors (read x, write y), backward 3 (read x and dy, write dx); the floor and the
// bound of a bfloat16 row move the bfloat16 op's bytes.
//
//   --bn2d_threads=N (or BN2D_BENCH_THREADS=N): threads of every implementation (default: all
//   cores). Ours: bn2d::set_num_threads; the bound: its own std::thread pool; oneDNN and
//   libtorch: omp_set_num_threads / torch::set_num_threads. The naive loop is single-threaded.
//   --benchmark_min_time defaults to 0.1 s here (pass it to override).
//
// Fused ops (training): train_fwd_relu, train_fwd_add_relu, bwd_relu, bwd_add_relu: ours fused
// (NCHW, NHWC), ours_unfused (our batch norm, then an elementwise ReLU / add + ReLU pass; in
// backward the mask pass first), oneDNN with fuse_norm_relu (its 2.x has no fused add + ReLU),
// and the floor over the fused op's bytes (fused_bytes below).
//
// ResNet-50 (bench/resnet50.h): resnet50/<op>/<impl>/<shape>/<tail> for each kind of the
// network's 53 batch-norm layers, each implementation running the layer with what follows it
// (ReLU, add + ReLU, or nothing), against the floor and the bound of the layer's bytes;
// tools/resnet50_report.py sums them into one training step and one inference pass.
//
// Inputs are random and never zero, generated once per shape and shared by every benchmark of
// that shape (each implementation reads the same bytes); outputs are preallocated and touched.
// Every benchmark sleeps 20 ms (other implementations' pools go idle), then runs its op twice
// before timing (thread pools, caches, oneDNN JIT).
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bn2d/bn2d.h"
#include "resnet50.h"
#include "stream_floor.h"
#include "suite.h"

#if BN2D_BENCH_ONEDNN
#include <dnnl.hpp>
#endif
#if BN2D_BENCH_OPENMP
#include <omp.h>
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
constexpr int kWarmupCalls = 2;

// ---- data: 64-byte aligned, generated once per shape ------------------------------------------
struct FreeDeleter {
    void operator()(float *p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

Buffer allocate(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    auto *p = static_cast<float *>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);  // touch every page now, not in the first timed call
    return Buffer(p);
}

// Uniform in +-[0.05, 2.5) plus an offset, from a counter-based hash: fast for 100 MB tensors,
// never zero.
void fill_random(float *p, int64_t n, uint64_t seed, float offset) {
    for (int64_t i = 0; i < n; ++i) {
        uint64_t z = (seed << 40) + static_cast<uint64_t>(i) + 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        const float mag = 0.05f + 2.45f * u;
        p[i] = offset + ((z & 1) ? mag : -mag);
        if (p[i] == 0.0f) p[i] = 0.5f;
    }
}

struct ShapeData {
    Buffer x, dy, y, dx;      // inputs x, dy; outputs y, dx (float32)
    Buffer xh, dyh, yh, dxh;  // the same as bfloat16 (made on first use)
    Buffer z, dz, t;          // fused ops: the residual, its gradient, an unfused intermediate
    uint16_t *h(const Buffer &b) const { return reinterpret_cast<uint16_t *>(b.get()); }
};

ShapeData &data_for(const Shape &s) {
    static std::map<std::string, std::unique_ptr<ShapeData>> cache;
    auto &slot = cache[s.name()];
    if (!slot) {
        slot = std::make_unique<ShapeData>();
        const int64_t n = s.numel();
        slot->x = allocate(n);
        slot->dy = allocate(n);
        slot->y = allocate(n);
        slot->dx = allocate(n);
        fill_random(slot->x.get(), n, 1, 0.3f);
        fill_random(slot->dy.get(), n, 2, 0.0f);
    }
    return *slot;
}

ShapeData &bf16_data_for(const Shape &s) {
    ShapeData &d = data_for(s);
    if (!d.xh) {
        const int64_t n = s.numel(), half = (n + 1) / 2;  // floats holding n bfloat16 values
        for (Buffer *b : {&d.xh, &d.dyh, &d.yh, &d.dxh}) *b = allocate(half);
        for (int64_t i = 0; i < n; ++i) {
            d.h(d.xh)[i] = bn2d::bfloat16_from_float(d.x[i]);
            d.h(d.dyh)[i] = bn2d::bfloat16_from_float(d.dy[i]);
        }
    }
    return d;
}

ShapeData &fused_data_for(const Shape &s) {
    ShapeData &d = data_for(s);
    if (!d.z) {
        for (Buffer *b : {&d.z, &d.dz, &d.t}) *b = allocate(s.numel());
        fill_random(d.z.get(), s.numel(), 3, -0.2f);
    }
    return d;
}

void finish(benchmark::State &state, Op op, const Shape &s, int bytes_per_element = 4) {
    state.SetBytesProcessed(state.iterations() * op_bytes(op, s, bytes_per_element));
    state.counters["threads"] = g_threads;
}

// Runs a benchmark under one CPU strategy (ours_fused, ours_split: both strategies in one run,
// interleaved, for scripts/tune_strategy.py), restoring the process's setting after it.
class StrategyScope {
public:
    explicit StrategyScope(bn2d::CpuStrategy s) : saved_(bn2d::cpu_strategy()) {
        bn2d::set_cpu_strategy(s);
    }
    ~StrategyScope() { bn2d::set_cpu_strategy(saved_); }
    StrategyScope(const StrategyScope &) = delete;
    StrategyScope &operator=(const StrategyScope &) = delete;

private:
    bn2d::CpuStrategy saved_;
};

std::vector<int64_t> sizes_of(const Shape &s) { return {s.n, s.c, s.h, s.w}; }
std::vector<int64_t> strides_of(const Shape &s, bool nhwc) {
    return nhwc ? bn2d::Tensor::channels_last_strides(sizes_of(s))
                : std::vector<int64_t>{s.c * s.h * s.w, s.h * s.w, s.w, 1};
}

// ---- fused batchnorm + ReLU and batchnorm + add + ReLU (training) ------------------------------
enum class Fused { FwdRelu, FwdAddRelu, BwdRelu, BwdAddRelu };
constexpr Fused kFusedOps[] = {Fused::FwdRelu, Fused::FwdAddRelu, Fused::BwdRelu,
                               Fused::BwdAddRelu};
const char *fused_name(Fused f) {
    switch (f) {
    case Fused::FwdRelu: return "train_fwd_relu";
    case Fused::FwdAddRelu: return "train_fwd_add_relu";
    case Fused::BwdRelu: return "bwd_relu";
    case Fused::BwdAddRelu: return "bwd_add_relu";
    }
    return "?";
}
bool is_backward(Fused f) { return f == Fused::BwdRelu || f == Fused::BwdAddRelu; }
bool has_residual(Fused f) { return f == Fused::FwdAddRelu || f == Fused::BwdAddRelu; }

// The least a fused op must move (float32): forward reads x (and z) and writes y; backward
// reads x, dy and the ReLU's mask at one bit per element (oneDNN's workspace; ours reads the
// forward's y instead, a whole tensor), writes dx (and dz).
int64_t fused_bytes(Fused f, const Shape &s) {
    const int64_t tensors = (is_backward(f) ? 3 : 2) + (has_residual(f) ? 1 : 0);
    return tensors * s.numel() * 4 + (is_backward(f) ? (s.numel() + 7) / 8 : 0);
}

// ---- ours ---------------------------------------------------------------------------------------
// The same random bytes viewed in either layout (the values are random: the layout only
// changes the access pattern).
void bench_ours(benchmark::State &state, Op op, Shape s, bool nhwc, bn2d::DType dtype,
                bn2d::CpuStrategy strategy) {
    StrategyScope scope(strategy);
    const bool bf16 = dtype == bn2d::DType::bfloat16;
    ShapeData &d = bf16 ? bf16_data_for(s) : data_for(s);
    auto view = [&](const Buffer &f32, const Buffer &b16) {
        return bn2d::Tensor(bf16 ? b16.get() : f32.get(), dtype, sizes_of(s), strides_of(s, nhwc));
    };
    const bn2d::Tensor x = view(d.x, d.xh), dy = view(d.dy, d.dyh);
    const bn2d::Tensor y = view(d.y, d.yh), dx = view(d.dx, d.dxh);
    bn2d::BatchNorm2d bn(s.c);  // training mode, affine, tracking running stats
    // One training forward: running stats for eval, saved batch stats for backward.
    bn.forward(x, y);
    if (op == Op::EvalFwd) bn.eval();
    auto call = [&] {
        if (op == Op::Bwd) {
            bn.backward(dy, dx, bn2d::BackwardMask{true, true});
        } else {
            bn.forward(x, y);  // training: also updates the running stats, every iteration
        }
    };
    for (int i = 0; i < kWarmupCalls; ++i) call();
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    finish(state, op, s, bn2d::dtype_size(dtype));
    state.SetLabel(bn2d::isa_name(bn2d::last_cpu_isa_used()));
}

// ---- the streaming bound and the floor (bench/stream_floor.h) ---------------------------------
using bn2d::bench::StreamPool;
StreamPool &stream_pool() {
    static StreamPool pool(g_threads);
    return pool;
}

// bound (ordinary stores), floor (streaming stores) or floor_via_scratch (stream_floor.h), over
// the op's bytes at `bytes_per_element` (a bfloat16 op moves the bytes of numel / 2 floats).
void bench_bound(benchmark::State &state, Op op, Shape s, bn2d::bench::Stores stores,
                 int bytes_per_element) {
    ShapeData &d = data_for(s);
    const bool bwd = op == Op::Bwd;
    const float *x = d.x.get(), *dy = bwd ? d.dy.get() : nullptr;
    float *out = bwd ? d.dx.get() : d.y.get();
    const int64_t floats = (s.numel() * bytes_per_element + 3) / 4;
    float a = 1.0001f;
    StreamPool &pool = stream_pool();
    for (int i = 0; i < kWarmupCalls; ++i) pool.run(x, dy, out, floats, a, 0.5f, stores);
    for (auto _ : state) {
        pool.run(x, dy, out, floats, a, 0.5f, stores);
        benchmark::ClobberMemory();
        a += 1e-7f;  // a different result every time
    }
    finish(state, op, s, bytes_per_element);
}

// ---- naive: single-threaded two-pass, what one writes first -----------------------------------
void bench_naive(benchmark::State &state, Op op, Shape s) {
    ShapeData &d = data_for(s);
    const float *x = d.x.get(), *dy = d.dy.get();
    float *out = op == Op::Bwd ? d.dx.get() : d.y.get();
    std::vector<float> mean(s.c, 0.0f), invstd(s.c, 1.0f), w(s.c, 1.0f), b(s.c, 0.0f);
    const int64_t hw = s.h * s.w;
    const double m = double(s.n * hw);
    auto stats = [&] {  // pass 1: mean; pass 2: variance
        for (int64_t c = 0; c < s.c; ++c) {
            double sum = 0, sq = 0;
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < hw; ++i) sum += x[(n * s.c + c) * hw + i];
            const double mu = sum / m;
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < hw; ++i) {
                    const double t = x[(n * s.c + c) * hw + i] - mu;
                    sq += t * t;
                }
            mean[c] = float(mu);
            invstd[c] = float(1.0 / std::sqrt(sq / m + 1e-5));
        }
    };
    // backward: dx = dy*k_dy + (x-mean)*k_x + k_0 per channel
    std::vector<float> k_dy(s.c), k_x(s.c), k_0(s.c);
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
    auto call = [&] {
        if (op == Op::TrainFwd) stats();
        if (op == Op::Bwd) grad_coefficients();
        for (int64_t n = 0; n < s.n; ++n)
            for (int64_t c = 0; c < s.c; ++c) {
                const int64_t base = (n * s.c + c) * hw;
                if (op == Op::Bwd) {
                    for (int64_t i = 0; i < hw; ++i)
                        out[base + i] =
                            dy[base + i] * k_dy[c] + (x[base + i] - mean[c]) * k_x[c] + k_0[c];
                } else {
                    for (int64_t i = 0; i < hw; ++i)
                        out[base + i] = (x[base + i] - mean[c]) * invstd[c] * w[c] + b[c];
                }
            }
    };
    stats();  // the training forward's statistics (backward) or the running stats (eval)
    call();   // one warm-up call: the naive loop is slow enough
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    finish(state, op, s);
    state.counters["threads"] = 1;
}

#if BN2D_BENCH_ONEDNN
// ---- oneDNN 2.6, NCHW or NHWC ------------------------------------------------------------------
// Same bytes in both layouts (the data is random, so the layout only changes the access
// pattern). Scale and shift (use_scale | use_shift); eval uses global stats; backward is
// prop_kind::backward (diff_src, diff_scale, diff_shift) of a training forward run once.
// relu: fuse_norm_relu (training forward keeps a workspace of ReLU signs; backward reads it).
void bench_onednn(benchmark::State &state, Op op, Shape s, bool nhwc, bool bf16, bool relu) {
    using namespace dnnl;
    using tag = memory::format_tag;
    ShapeData &d = bf16 ? bf16_data_for(s) : data_for(s);
    engine eng(engine::kind::cpu, 0);
    stream strm(eng);
    const memory::desc md({s.n, s.c, s.h, s.w},
                          bf16 ? memory::data_type::bf16 : memory::data_type::f32,
                          nhwc ? tag::nhwc : tag::nchw);
    float *xp = bf16 ? d.xh.get() : d.x.get(), *yp = bf16 ? d.yh.get() : d.y.get();
    float *dyp = bf16 ? d.dyh.get() : d.dy.get(), *dxp = bf16 ? d.dxh.get() : d.dx.get();
    const memory::desc cd({s.c}, memory::data_type::f32, tag::x);
    std::vector<float> mean(s.c, 0.0f), var(s.c, 1.0f), scale(s.c, 1.0f), shift(s.c, 0.0f),
        dscale(s.c), dshift(s.c);
    auto mem = [&](const memory::desc &m, float *p) { return memory(m, eng, p); };
    const auto flags = normalization_flags::use_scale | normalization_flags::use_shift |
                       (relu ? normalization_flags::fuse_norm_relu : normalization_flags::none);
    const float eps = 1e-5f;
    const auto fwd_train_pd = batch_normalization_forward::primitive_desc(
        batch_normalization_forward::desc(prop_kind::forward_training, md, eps, flags), eng);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, mem(md, xp)},
                                            {DNNL_ARG_DST, mem(md, yp)},
                                            {DNNL_ARG_MEAN, mem(cd, mean.data())},
                                            {DNNL_ARG_VARIANCE, mem(cd, var.data())},
                                            {DNNL_ARG_SCALE, mem(cd, scale.data())},
                                            {DNNL_ARG_SHIFT, mem(cd, shift.data())}};
    memory workspace;
    if (relu) {
        workspace = memory(fwd_train_pd.workspace_desc(), eng);
        args.insert({DNNL_ARG_WORKSPACE, workspace});
    }
    // The training forward once: batch statistics for backward (and eval's "running" stats).
    batch_normalization_forward(fwd_train_pd).execute(strm, args);
    strm.wait();
    primitive prim;
    std::string impl;
    if (op == Op::TrainFwd) {
        prim = batch_normalization_forward(fwd_train_pd);
        impl = fwd_train_pd.impl_info_str();
    } else if (op == Op::EvalFwd) {
        const auto pd = batch_normalization_forward::primitive_desc(
            batch_normalization_forward::desc(prop_kind::forward_inference, md, eps,
                                              flags | normalization_flags::use_global_stats),
            eng);
        prim = batch_normalization_forward(pd);
        impl = pd.impl_info_str();
    } else {
        const auto pd = batch_normalization_backward::primitive_desc(
            batch_normalization_backward::desc(prop_kind::backward, md, md, eps, flags), eng,
            fwd_train_pd);
        prim = batch_normalization_backward(pd);
        impl = pd.impl_info_str();
        args = {{DNNL_ARG_SRC, mem(md, xp)},
                {DNNL_ARG_DIFF_DST, mem(md, dyp)},
                {DNNL_ARG_MEAN, mem(cd, mean.data())},
                {DNNL_ARG_VARIANCE, mem(cd, var.data())},
                {DNNL_ARG_SCALE, mem(cd, scale.data())},
                {DNNL_ARG_SHIFT, mem(cd, shift.data())},
                {DNNL_ARG_DIFF_SRC, mem(md, dxp)},
                {DNNL_ARG_DIFF_SCALE, mem(cd, dscale.data())},
                {DNNL_ARG_DIFF_SHIFT, mem(cd, dshift.data())}};
        if (relu) args.insert({DNNL_ARG_WORKSPACE, workspace});
    }
    for (int i = 0; i < kWarmupCalls; ++i) prim.execute(strm, args);
    strm.wait();
    for (auto _ : state) {
        prim.execute(strm, args);
        strm.wait();
        benchmark::ClobberMemory();
    }
    finish(state, op, s, bf16 ? 2 : 4);
    if (relu)
        state.SetBytesProcessed(state.iterations() *
                                fused_bytes(op == Op::Bwd ? Fused::BwdRelu : Fused::FwdRelu, s));
    state.SetLabel(impl);
}
#endif

#if BN2D_BENCH_TORCH
// ---- libtorch CPU ---------------------------------------------------------------------------------
// at::native_batch_norm (forward, training or eval) and at::native_batch_norm_backward (train,
// output mask all three), what torch.nn.BatchNorm2d runs on the CPU. libtorch 1.13 has no CPU
// kernel for native_batch_norm.out and only a copying out= wrapper for the backward, so torch
// allocates its outputs per call, as it does for its users (label "alloc"); main() keeps freed
// memory in the heap so that this costs no fresh page faults. If a real forward out= kernel is
// found, forward writes into the preallocated output instead (label "out").
void bench_torch(benchmark::State &state, Op op, Shape s, bool nhwc, bool bf16) {
    torch::NoGradGuard no_grad;
    ShapeData &d = bf16 ? bf16_data_for(s) : data_for(s);
    const auto opts = torch::TensorOptions().dtype(bf16 ? torch::kBFloat16 : torch::kFloat32);
    const std::vector<int64_t> sizes = sizes_of(s), strides = strides_of(s, nhwc);
    at::Tensor x = torch::from_blob(bf16 ? d.xh.get() : d.x.get(), sizes, strides, opts);
    at::Tensor dy = torch::from_blob(bf16 ? d.dyh.get() : d.dy.get(), sizes, strides, opts);
    at::Tensor y = torch::from_blob(bf16 ? d.yh.get() : d.y.get(), sizes, strides, opts);
    at::Tensor w = torch::ones({s.c}), b = torch::zeros({s.c});
    at::Tensor rm = torch::zeros({s.c}), rv = torch::ones({s.c});
    at::Tensor save_mean, save_invstd;
    std::tie(std::ignore, save_mean, save_invstd) =
        at::native_batch_norm(x, w, b, rm, rv, true, 0.1, 1e-5);
    const bool training = op == Op::TrainFwd;
    bool use_out = false;
    at::Tensor out_mean = torch::empty({s.c}), out_invstd = torch::empty({s.c});
    if (op != Op::Bwd) {
        try {
            at::native_batch_norm_out(y, out_mean, out_invstd, x, w, b, rm, rv, training, 0.1,
                                      1e-5);
            use_out = y.data_ptr() == (bf16 ? d.yh.get() : d.y.get());
        } catch (const c10::Error &) {
            use_out = false;
        }
    }
    auto call = [&] {
        if (op == Op::Bwd) {
            auto g = at::native_batch_norm_backward(dy, x, w, rm, rv, save_mean, save_invstd, true,
                                                    1e-5, {true, true, true});
            benchmark::DoNotOptimize(std::get<0>(g).data_ptr());
        } else if (use_out) {
            at::native_batch_norm_out(y, out_mean, out_invstd, x, w, b, rm, rv, training, 0.1,
                                      1e-5);
        } else {
            auto r = at::native_batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5);
            benchmark::DoNotOptimize(std::get<0>(r).data_ptr());
        }
    };
    for (int i = 0; i < kWarmupCalls; ++i) call();
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    finish(state, op, s, bf16 ? 2 : 4);
    state.SetLabel(use_out ? "out" : "alloc");
}
#endif

// Unfused: our batch norm into t, then the activation as an op of its own: a second module in
// eval mode with a unit scale (running_var 1, eps 0, weight 1, bias 0) and the ReLU, which
// computes relu(t + z) and, in backward, the ReLU's mask pass (the same Halide thread pool as
// ours, so the sequence is measured as a user of this library would run it).
void bench_fused_ours(benchmark::State &state, Fused f, Shape s, bool nhwc, bool fused) {
    ShapeData &d = fused_data_for(s);
    auto view = [&](const Buffer &b) {
        return bn2d::Tensor(b.get(), bn2d::DType::float32, sizes_of(s), strides_of(s, nhwc));
    };
    const bn2d::Tensor x = view(d.x), z = view(d.z), y = view(d.y), dy = view(d.dy);
    const bn2d::Tensor dx = view(d.dx), dz = view(d.dz), t = view(d.t);
    bn2d::Options relu;
    relu.activation = bn2d::Activation::relu;
    bn2d::BatchNorm2d bn(s.c, fused ? relu : bn2d::Options{});
    relu.eps = 0.0;
    bn2d::BatchNorm2d act(s.c, relu);
    act.eval();
    const bool add = has_residual(f);
    auto forward = [&] {
        if (fused) {
            add ? bn.forward_add(x, z, y) : bn.forward(x, y);
        } else {
            bn.forward(x, t);
            add ? act.forward_add(t, z, y) : act.forward(t, y);
        }
    };
    auto backward = [&] {
        if (fused) {
            add ? bn.backward_add(dy, dx, dz) : bn.backward(dy, dx);
        } else {
            const bn2d::Tensor &g = dz;  // the masked gradient (dz itself with a residual)
            act.backward(dy, g, bn2d::BackwardMask{true, false});
            bn.backward(g, dx);
        }
    };
    forward();  // statistics and y for backward
    auto call = [&] { is_backward(f) ? backward() : forward(); };
    for (int i = 0; i < kWarmupCalls; ++i) call();
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * fused_bytes(f, s));
    state.counters["threads"] = g_threads;
    state.SetLabel(bn2d::isa_name(bn2d::last_cpu_isa_used()));
}

// `bytes` moved in the forward pattern (one stream in, one out) or the backward one (two in, one
// out), with streaming stores (the floor) or ordinary ones (the bound) on all cores.
void move_bytes(benchmark::State &state, int64_t bytes, bool two_reads,
                bn2d::bench::Stores stores) {
    const int64_t floats = bytes / 4 / (two_reads ? 3 : 2);
    static std::map<int64_t, std::vector<Buffer>> scratch;  // floats -> in, in, out
    auto &bufs = scratch[floats];
    if (bufs.empty()) {
        for (int i = 0; i < 3; ++i) bufs.push_back(allocate(floats));
        fill_random(bufs[0].get(), floats, 4, 0.3f);
        fill_random(bufs[1].get(), floats, 5, 0.0f);
    }
    const float *dy = two_reads ? bufs[1].get() : nullptr;
    float a = 1.0001f;
    StreamPool &pool = stream_pool();
    for (int i = 0; i < kWarmupCalls; ++i)
        pool.run(bufs[0].get(), dy, bufs[2].get(), floats, a, 0.5f, stores);
    for (auto _ : state) {
        pool.run(bufs[0].get(), dy, bufs[2].get(), floats, a, 0.5f, stores);
        benchmark::ClobberMemory();
        a += 1e-7f;
    }
}

// The floor of a fused op: its bytes streamed by the forward pattern (1 read, 1 write) or the
// backward one (2 reads, 1 write) with streaming stores.
void bench_fused_floor(benchmark::State &state, Fused f, Shape s) {
    move_bytes(state, fused_bytes(f, s), f != Fused::FwdRelu, bn2d::bench::Stores::streaming);
    state.SetBytesProcessed(state.iterations() * fused_bytes(f, s));
    state.counters["threads"] = g_threads;
}

// ---- ResNet-50's batch-norm layers (bench/resnet50.h) ------------------------------------------
// Each implementation runs a layer as a network runs it: the batch norm and what follows it.
// Ours fuses the ReLU or add + ReLU; oneDNN fuses the ReLU (fuse_norm_relu) and runs the add +
// ReLU as a binary add with a ReLU post-op (its 2.x has no fused add); libtorch runs what
// autograd runs, batch norm then add_ and relu_, and in backward threshold_backward (the
// ReLU's gradient, which is also the residual's) then the batch norm's backward.
using bn2d::bench::Layer;
using bn2d::bench::LayerTail;

// The least a layer's op must move (float32): the op's tensors (suite.h), the residual (read in
// forward, its gradient written in backward) and in backward the ReLU's mask at one bit per
// element.
int64_t layer_bytes(Op op, const Layer &l) {
    const int64_t n = l.shape.numel();
    const bool add = l.tail == LayerTail::add_relu;
    const int64_t mask = op == Op::Bwd && l.tail != LayerTail::none ? (n + 7) / 8 : 0;
    return op_bytes(op, l.shape) + (add ? n * 4 : 0) + mask;
}

void finish_layer(benchmark::State &state, Op op, const Layer &l) {
    state.SetBytesProcessed(state.iterations() * layer_bytes(op, l));
    state.counters["threads"] = g_threads;
    state.counters["layers"] = l.count;
}

// What the op's last call ran: split or fused (bn2d::CpuStrategy), as the runtime chose it.
const char *our_strategy(Op op, bool nhwc) {
    if (op == Op::EvalFwd) return "pointwise";
    if (nhwc) return "nhwc";
    return bn2d::last_cpu_strategy_used() == bn2d::CpuStrategy::split ? "split" : "fused";
}

void bench_layer_ours(benchmark::State &state, Op op, Layer l, bool nhwc,
                      bn2d::CpuStrategy strategy) {
    StrategyScope scope(strategy);
    const Shape &s = l.shape;
    ShapeData &d = fused_data_for(s);
    auto view = [&](const Buffer &b) {
        return bn2d::Tensor(b.get(), bn2d::DType::float32, sizes_of(s), strides_of(s, nhwc));
    };
    const bn2d::Tensor x = view(d.x), z = view(d.z), y = view(d.y), dy = view(d.dy);
    const bn2d::Tensor dx = view(d.dx), dz = view(d.dz);
    bn2d::Options o;
    if (l.tail != LayerTail::none) o.activation = bn2d::Activation::relu;
    bn2d::BatchNorm2d bn(s.c, o);
    const bool add = l.tail == LayerTail::add_relu;
    auto forward = [&] { add ? bn.forward_add(x, z, y) : bn.forward(x, y); };
    forward();  // statistics and y for backward, running statistics for eval
    if (op == Op::EvalFwd) bn.eval();
    auto call = [&] {
        if (op != Op::Bwd) return forward();
        add ? bn.backward_add(dy, dx, dz) : bn.backward(dy, dx);
    };
    for (int i = 0; i < kWarmupCalls; ++i) call();
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    finish_layer(state, op, l);
    state.SetLabel(std::string(bn2d::isa_name(bn2d::last_cpu_isa_used())) + " " +
                   our_strategy(op, nhwc));
}

// The floor (streaming stores) or the bound (ordinary stores) of a layer's bytes, moved in the
// op's pattern.
void bench_layer_floor(benchmark::State &state, Op op, Layer l, bn2d::bench::Stores stores) {
    move_bytes(state, layer_bytes(op, l), op == Op::Bwd, stores);
    finish_layer(state, op, l);
}

#if BN2D_BENCH_ONEDNN
// A batch norm followed by the residual's add + ReLU: oneDNN's plain batch norm, then a binary
// add with a ReLU post-op (forward), or the ReLU's backward (from its output) then the batch
// norm's backward.
void bench_onednn_add_relu(benchmark::State &state, Op op, const Shape &s, bool nhwc) {
    using namespace dnnl;
    using tag = memory::format_tag;
    ShapeData &d = fused_data_for(s);
    engine eng(engine::kind::cpu, 0);
    stream strm(eng);
    const memory::desc md({s.n, s.c, s.h, s.w}, memory::data_type::f32,
                          nhwc ? tag::nhwc : tag::nchw);
    const memory::desc cd({s.c}, memory::data_type::f32, tag::x);
    std::vector<float> mean(s.c, 0.0f), var(s.c, 1.0f), scale(s.c, 1.0f), shift(s.c, 0.0f),
        dscale(s.c), dshift(s.c);
    auto mem = [&](const memory::desc &m, void *p) { return memory(m, eng, p); };
    const auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
    const float eps = 1e-5f;
    const auto train_pd = batch_normalization_forward::primitive_desc(
        batch_normalization_forward::desc(prop_kind::forward_training, md, eps, flags), eng);
    const auto eval_pd = batch_normalization_forward::primitive_desc(
        batch_normalization_forward::desc(prop_kind::forward_inference, md, eps,
                                          flags | normalization_flags::use_global_stats),
        eng);
    post_ops relu;
    relu.append_eltwise(1.0f, algorithm::eltwise_relu, 0.0f, 0.0f);
    primitive_attr attr;
    attr.set_post_ops(relu);
    const auto add_pd =
        binary::primitive_desc(binary::desc(algorithm::binary_add, md, md, md), attr, eng);
    const auto relu_fwd_pd = eltwise_forward::primitive_desc(
        eltwise_forward::desc(prop_kind::forward_training, algorithm::eltwise_relu_use_dst_for_bwd,
                              md),
        eng);
    const auto relu_bwd_pd = eltwise_backward::primitive_desc(
        eltwise_backward::desc(algorithm::eltwise_relu_use_dst_for_bwd, md, md), eng, relu_fwd_pd);
    const auto bn_bwd_pd = batch_normalization_backward::primitive_desc(
        batch_normalization_backward::desc(prop_kind::backward, md, md, eps, flags), eng, train_pd);
    std::unordered_map<int, memory> stats = {{DNNL_ARG_MEAN, mem(cd, mean.data())},
                                             {DNNL_ARG_VARIANCE, mem(cd, var.data())},
                                             {DNNL_ARG_SCALE, mem(cd, scale.data())},
                                             {DNNL_ARG_SHIFT, mem(cd, shift.data())}};
    auto with = [&](std::unordered_map<int, memory> args) {
        for (const auto &kv : stats) args.insert(kv);
        return args;
    };
    const auto bn_args =
        with({{DNNL_ARG_SRC, mem(md, d.x.get())}, {DNNL_ARG_DST, mem(md, d.t.get())}});
    const std::unordered_map<int, memory> add_args = {{DNNL_ARG_SRC_0, mem(md, d.t.get())},
                                                      {DNNL_ARG_SRC_1, mem(md, d.z.get())},
                                                      {DNNL_ARG_DST, mem(md, d.y.get())}};
    const std::unordered_map<int, memory> relu_bwd_args = {
        {DNNL_ARG_DST, mem(md, d.y.get())},
        {DNNL_ARG_DIFF_DST, mem(md, d.dy.get())},
        {DNNL_ARG_DIFF_SRC, mem(md, d.dz.get())}};
    const auto bn_bwd_args = with({{DNNL_ARG_SRC, mem(md, d.x.get())},
                                   {DNNL_ARG_DIFF_DST, mem(md, d.dz.get())},
                                   {DNNL_ARG_DIFF_SRC, mem(md, d.dx.get())},
                                   {DNNL_ARG_DIFF_SCALE, mem(cd, dscale.data())},
                                   {DNNL_ARG_DIFF_SHIFT, mem(cd, dshift.data())}});
    const batch_normalization_forward bn_train(train_pd), bn_eval(eval_pd);
    const binary add(add_pd);
    const eltwise_backward relu_bwd(relu_bwd_pd);
    const batch_normalization_backward bn_bwd(bn_bwd_pd);
    // The training forward once: statistics for backward and eval, y for the ReLU's mask.
    bn_train.execute(strm, bn_args);
    add.execute(strm, add_args);
    strm.wait();
    auto call = [&] {
        if (op == Op::Bwd) {
            relu_bwd.execute(strm, relu_bwd_args);
            bn_bwd.execute(strm, bn_bwd_args);
        } else {
            (op == Op::TrainFwd ? bn_train : bn_eval).execute(strm, bn_args);
            add.execute(strm, add_args);
        }
        strm.wait();
    };
    for (int i = 0; i < kWarmupCalls; ++i) call();
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    const std::string bn = (op == Op::Bwd        ? bn_bwd_pd.impl_info_str()
                            : op == Op::TrainFwd ? train_pd.impl_info_str()
                                                 : eval_pd.impl_info_str());
    const std::string tail = op == Op::Bwd ? relu_bwd_pd.impl_info_str() : add_pd.impl_info_str();
    state.SetLabel(bn + " + " + tail);
}

void bench_layer_onednn(benchmark::State &state, Op op, Layer l, bool nhwc) {
    if (l.tail == LayerTail::add_relu)
        bench_onednn_add_relu(state, op, l.shape, nhwc);
    else
        bench_onednn(state, op, l.shape, nhwc, false, l.tail == LayerTail::relu);
    finish_layer(state, op, l);
}
#endif

#if BN2D_BENCH_TORCH
void bench_layer_torch(benchmark::State &state, Op op, Layer l, bool nhwc) {
    torch::NoGradGuard no_grad;
    const Shape &s = l.shape;
    ShapeData &d = fused_data_for(s);
    const std::vector<int64_t> sizes = sizes_of(s), strides = strides_of(s, nhwc);
    auto wrap = [&](const Buffer &b) { return torch::from_blob(b.get(), sizes, strides); };
    const at::Tensor x = wrap(d.x), z = wrap(d.z), dy = wrap(d.dy);
    const at::Tensor w = torch::ones({s.c}), b = torch::zeros({s.c});
    at::Tensor rm = torch::zeros({s.c}), rv = torch::ones({s.c});
    const bool relu = l.tail != LayerTail::none, add = l.tail == LayerTail::add_relu;
    const bool training = op != Op::EvalFwd;
    auto forward = [&](bool train) {
        auto r = at::native_batch_norm(x, w, b, rm, rv, train, 0.1, 1e-5);
        at::Tensor out = std::get<0>(r);
        if (add) out.add_(z);
        if (relu) out.relu_();
        return std::make_tuple(out, std::get<1>(r), std::get<2>(r));
    };
    const auto [y, save_mean, save_invstd] = forward(true);
    auto call = [&] {
        if (op == Op::Bwd) {
            const at::Tensor g = relu ? at::threshold_backward(dy, y, 0) : dy;
            auto r = at::native_batch_norm_backward(g, x, w, rm, rv, save_mean, save_invstd, true,
                                                    1e-5, {true, true, true});
            benchmark::DoNotOptimize(std::get<0>(r).data_ptr());
        } else {
            benchmark::DoNotOptimize(std::get<0>(forward(training)).data_ptr());
        }
    };
    for (int i = 0; i < kWarmupCalls; ++i) call();
    for (auto _ : state) {
        call();
        benchmark::ClobberMemory();
    }
    finish_layer(state, op, l);
    state.SetLabel("alloc");
}
#endif

// Registers a benchmark (real time, ms). A failure (a bn2d::Error, a oneDNN or torch exception)
// marks that benchmark as errored in the output instead of ending the run.
template<typename Body>
void register_guarded(const std::string &name, Body body) {
    auto guarded = [body](benchmark::State &state) {
        // Let the previous benchmark's thread pools (OpenMP's spin for a few ms) go idle, so
        // they take no core from this one.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        try {
            body(state);
        } catch (const std::exception &e) {
            state.SkipWithError(e.what());
        }
    };
    benchmark::RegisterBenchmark(name.c_str(), guarded)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

void register_all() {
    for (const Shape &s : bn2d::bench::suite_shapes())
        for (Op op : bn2d::bench::kOps) {
            const std::string tail = "/" + s.name();
            auto reg = [&](const std::string &impl, auto fn, auto... extra) {
                register_guarded(
                    std::string(op_name(op)) + "/" + impl + tail,
                    [fn, op, s, extra...](benchmark::State &state) { fn(state, op, s, extra...); });
            };
            using bn2d::CpuStrategy;
            using bn2d::DType;
            const CpuStrategy automatic = bn2d::cpu_strategy();  // the environment's
            reg("ours", bench_ours, false, DType::float32, automatic);
            reg("ours_nhwc", bench_ours, true, DType::float32, automatic);
            reg("ours_bf16", bench_ours, false, DType::bfloat16, automatic);
            reg("ours_nhwc_bf16", bench_ours, true, DType::bfloat16, automatic);
            if (op != Op::EvalFwd) {
                reg("ours_fused", bench_ours, false, DType::float32, CpuStrategy::fused);
                reg("ours_split", bench_ours, false, DType::float32, CpuStrategy::split);
            }
            using bn2d::bench::Stores;
            reg("floor", bench_bound, Stores::streaming, 4);
            reg("bound", bench_bound, Stores::ordinary, 4);
            reg("floor_via_scratch", bench_bound, Stores::via_scratch, 4);
            reg("floor_bf16", bench_bound, Stores::streaming, 2);
#if BN2D_BENCH_ONEDNN
            reg("onednn_nchw", bench_onednn, false, false, false);
            reg("onednn_nhwc", bench_onednn, true, false, false);
            reg("onednn_nhwc_bf16", bench_onednn, true, true, false);
#endif
#if BN2D_BENCH_TORCH
            reg("torch", bench_torch, false, false);
            reg("torch_nhwc", bench_torch, true, false);
            reg("torch_bf16", bench_torch, false, true);
#endif
            reg("naive", bench_naive);
        }
    for (const Shape &s : bn2d::bench::suite_shapes())
        for (Fused f : kFusedOps) {
            auto reg = [&](const std::string &impl, auto fn, auto... extra) {
                register_guarded(
                    std::string(fused_name(f)) + "/" + impl + "/" + s.name(),
                    [fn, s, extra...](benchmark::State &state) { fn(state, s, extra...); });
            };
            auto ours = [f](benchmark::State &st, const Shape &sh, bool nhwc, bool fused) {
                bench_fused_ours(st, f, sh, nhwc, fused);
            };
            reg("ours", ours, false, true);
            reg("ours_nhwc", ours, true, true);
            reg("ours_unfused", ours, false, false);
            reg("floor",
                [f](benchmark::State &st, const Shape &sh) { bench_fused_floor(st, f, sh); });
#if BN2D_BENCH_ONEDNN
            if (!has_residual(f)) {
                const Op op = is_backward(f) ? Op::Bwd : Op::TrainFwd;
                auto onednn = [op](benchmark::State &st, const Shape &sh, bool nhwc) {
                    bench_onednn(st, op, sh, nhwc, false, true);
                };
                reg("onednn_nchw", onednn, false);
                reg("onednn_nhwc", onednn, true);
            }
#endif
        }
}

// ResNet-50's layers: resnet50/<op>/<implementation>/<shape>/<tail>, counter `layers`.
void register_resnet50() {
    for (const Layer &l : bn2d::bench::resnet50_layers())
        for (Op op : bn2d::bench::kOps) {
            auto reg = [&](const std::string &impl, auto fn, auto... extra) {
                register_guarded(
                    "resnet50/" + std::string(op_name(op)) + "/" + impl + "/" + l.shape.name() +
                        "/" + bn2d::bench::tail_name(l.tail),
                    [fn, op, l, extra...](benchmark::State &state) { fn(state, op, l, extra...); });
            };
            using bn2d::CpuStrategy;
            const CpuStrategy automatic = bn2d::cpu_strategy();  // the environment's
            reg("ours", bench_layer_ours, false, automatic);
            reg("ours_nhwc", bench_layer_ours, true, automatic);
            if (op != Op::EvalFwd) {
                reg("ours_fused", bench_layer_ours, false, CpuStrategy::fused);
                reg("ours_split", bench_layer_ours, false, CpuStrategy::split);
            }
            reg("floor", bench_layer_floor, bn2d::bench::Stores::streaming);
            reg("bound", bench_layer_floor, bn2d::bench::Stores::ordinary);
#if BN2D_BENCH_ONEDNN
            reg("onednn_nchw", bench_layer_onednn, false);
            reg("onednn_nhwc", bench_layer_onednn, true);
#endif
#if BN2D_BENCH_TORCH
            reg("torch", bench_layer_torch, false);
            reg("torch_nhwc", bench_layer_torch, true);
#endif
        }
}

}  // namespace

int main(int argc, char **argv) {
    // Our flag first: --bn2d_threads=N; else BN2D_BENCH_THREADS; else all cores.
    std::vector<char *> rest;
    bool min_time_given = false;
    for (int i = 0; i < argc; ++i) {
        if (std::strncmp(argv[i], "--bn2d_threads=", 15) == 0) {
            g_threads = std::atoi(argv[i] + 15);
            if (g_threads <= 0) {
                std::fprintf(stderr, "--bn2d_threads: expected a positive integer, got '%s'\n",
                             argv[i] + 15);
                return 2;
            }
            continue;
        }
        if (std::strncmp(argv[i], "--benchmark_min_time", 20) == 0) min_time_given = true;
        rest.push_back(argv[i]);
    }
    if (g_threads <= 0 && std::getenv("BN2D_BENCH_THREADS"))
        g_threads = std::atoi(std::getenv("BN2D_BENCH_THREADS"));
    if (g_threads <= 0) g_threads = static_cast<int>(std::thread::hardware_concurrency());
    if (g_threads <= 0) g_threads = 1;
    // A modest default: the tensors are 13-100 MB and a 2-core machine should get through the
    // whole suite in minutes.
    static char default_min_time[] = "--benchmark_min_time=0.1";
    if (!min_time_given) rest.insert(rest.begin() + 1, default_min_time);

    bn2d::set_num_threads(g_threads);
#if BN2D_BENCH_OPENMP
    omp_set_num_threads(g_threads);  // oneDNN's threads (its CPU runtime is OpenMP)
#endif
#if BN2D_BENCH_TORCH
    torch::set_num_threads(g_threads);
    // libtorch allocates outputs per call: keep large freed blocks in the heap (as caching
    // allocators do) instead of returning them to the OS and faulting them in again.
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif

    benchmark::AddCustomContext("bn2d_threads", std::to_string(g_threads));
    benchmark::AddCustomContext("bn2d_num_threads", std::to_string(bn2d::num_threads()));
    // The ISA the benchmark's calls run: the cap as this CPU meets it.
    benchmark::AddCustomContext("bn2d_max_cpu_isa", bn2d::isa_name(bn2d::max_cpu_isa()));
    bn2d::bench::add_build_context();
#if BN2D_BENCH_ONEDNN
    const dnnl_version_t *v = dnnl_version();
    benchmark::AddCustomContext("onednn_version", std::to_string(v->major) + "." +
                                                      std::to_string(v->minor) + "." +
                                                      std::to_string(v->patch));
#endif
#if BN2D_BENCH_TORCH
    benchmark::AddCustomContext("torch_num_threads", std::to_string(at::get_num_threads()));
#endif

    int rest_argc = static_cast<int>(rest.size());
    benchmark::Initialize(&rest_argc, rest.data());
    if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 1;
    register_all();
    register_resnet50();
    try {
        benchmark::RunSpecifiedBenchmarks();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "bn2d_bench: %s\n", e.what());
        return 1;
    }
    benchmark::Shutdown();
    return 0;
}
