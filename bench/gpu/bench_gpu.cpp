// GPU benchmarks: our CUDA kernels vs cuDNN's batch normalization vs a device-to-device copy of
// the same bytes, on the suite shapes, NCHW and NHWC (channels_last), timed with CUDA events on one stream (ours run on it
// through bn2d::use_cuda_context). Without a usable NVIDIA GPU every benchmark is skipped with
// the reason. PyTorch CUDA is not a peer here: Debian's libtorch is CPU-only.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <dlfcn.h>

#include <cstdio>
#include <string>
#include <vector>

#include "../suite.h"
#include "bn2d/bn2d.h"

namespace {

using bn2d::bench::Op;
using bn2d::bench::op_bytes;
using bn2d::bench::op_name;
using bn2d::bench::Shape;

#define CUDA_OK(x)                                                                                 \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess)                                                                     \
            throw std::runtime_error(std::string(#x) + ": " + cudaGetErrorString(e_));             \
    } while (0)
#define CUDNN_OK(x)                                                                                \
    do {                                                                                           \
        cudnnStatus_t s_ = (x);                                                                    \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                            \
            throw std::runtime_error(std::string(#x) + ": " + cudnnGetErrorString(s_));            \
    } while (0)

// One CUDA context and stream shared by us, cuDNN and the copy.
struct Gpu {
    bool ok = false;
    std::string why;
    cudaStream_t stream = nullptr;
    cudnnHandle_t cudnn = nullptr;
    Gpu() {
        int count = 0;
        if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
            why = "no CUDA device";
            return;
        }
        CUDA_OK(cudaFree(nullptr));  // creates the primary context and makes it current
        // The driver API is loaded at run time, so the binary starts on machines without one.
        void *ctx = nullptr;
        void *libcuda = dlopen("libcuda.so.1", RTLD_NOW);
        using GetCurrent = int (*)(void **);
        auto get_current =
            libcuda ? reinterpret_cast<GetCurrent>(dlsym(libcuda, "cuCtxGetCurrent")) : nullptr;
        if (!get_current || get_current(&ctx) != 0 || !ctx) {
            why = "cannot get the current CUDA context";
            return;
        }
        CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        CUDNN_OK(cudnnCreate(&cudnn));
        CUDNN_OK(cudnnSetStream(cudnn, stream));
        bn2d::use_cuda_context(ctx, stream);
        ok = bn2d::device_available(bn2d::Device::Cuda);
        if (!ok) why = bn2d::device_unavailable_reason(bn2d::Device::Cuda);
    }
};

Gpu &gpu() {
    static Gpu g;
    return g;
}

// Fresh random data (never zeros) on the device, cheap to draw: a 25M-element tensor is filled
// in well under a second, once per shape and kept (see shape_buffers).
float *device_random(int64_t n, uint64_t seed) {
    std::vector<float> h(n);
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (float &v : h) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        v = 0.3f + 3.0f * (static_cast<float>(state >> 40) / 16777216.0f - 0.5f);
    }
    float *p = nullptr;
    CUDA_OK(cudaMalloc(&p, n * sizeof(float)));
    CUDA_OK(cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    return p;
}

// x, y, dy, dx of one shape, drawn once and shared by every implementation and repetition
// (Google Benchmark calls a benchmark function several times). The suite runs shape by shape,
// so only the current shape's buffers are kept.
struct ShapeBuffers {
    std::string shape;
    float *x = nullptr, *y = nullptr, *dy = nullptr, *dx = nullptr;
};
const ShapeBuffers &shape_buffers(const Shape &s) {
    static ShapeBuffers b;
    if (b.shape != s.name()) {
        for (float *p : {b.x, b.y, b.dy, b.dx}) cudaFree(p);  // cudaFree(nullptr) is a no-op
        b = {s.name(), device_random(s.numel(), 1), device_random(s.numel(), 2),
             device_random(s.numel(), 3), device_random(s.numel(), 4)};
    }
    return b;
}

// Times `body` with events on the shared stream; bytes = what the op must move.
template<typename F>
void run_timed(benchmark::State &state, int64_t bytes, F &&body) {
    cudaEvent_t a, b;
    CUDA_OK(cudaEventCreate(&a));
    CUDA_OK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) body();  // warm-up: module load, handle setup
    CUDA_OK(cudaStreamSynchronize(gpu().stream));
    for (auto _ : state) {
        CUDA_OK(cudaEventRecord(a, gpu().stream));
        body();
        CUDA_OK(cudaEventRecord(b, gpu().stream));
        CUDA_OK(cudaEventSynchronize(b));
        float ms = 0;
        CUDA_OK(cudaEventElapsedTime(&ms, a, b));
        state.SetIterationTime(ms / 1e3);
    }
    CUDA_OK(cudaGetLastError());
    state.SetBytesProcessed(state.iterations() * bytes);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

enum class Layout { nchw, nhwc };

void bench_ours(benchmark::State &state, Op op, Shape s, Layout layout) {
    if (!gpu().ok) return state.SkipWithError(gpu().why.c_str());
    try {
        const ShapeBuffers &b = shape_buffers(s);
        std::vector<int64_t> sizes = {s.n, s.c, s.h, s.w};
        const std::vector<int64_t> strides = layout == Layout::nhwc
                                                 ? bn2d::Tensor::channels_last_strides(sizes)
                                                 : std::vector<int64_t>{};
        auto view = [&](float *p) {
            return bn2d::Tensor::on_device(reinterpret_cast<uint64_t>(p), sizes, bn2d::Device::Cuda,
                                           bn2d::DType::float32, strides);
        };
        bn2d::BatchNorm2d bn(s.c);
        bn.to(bn2d::Device::Cuda);
        if (op == Op::EvalFwd) bn.eval();
        bn.forward(view(b.x), view(b.y));
        run_timed(state, op_bytes(op, s), [&] {
            if (op == Op::Bwd) {
                bn.backward(view(b.dy), view(b.dx));
            } else {
                bn.forward(view(b.x), view(b.y));
            }
        });
    } catch (const std::exception &e) {
        state.SkipWithError(e.what());
    }
}

// cuDNN's batch normalization through its Ex API: NCHW in CUDNN_BATCHNORM_SPATIAL mode, NHWC in
// CUDNN_BATCHNORM_SPATIAL_PERSISTENT (its fast NHWC kernels; the mode PyTorch picks for
// channels_last), eval forward through cudnnBatchNormalizationForwardInference.
void bench_cudnn(benchmark::State &state, Op op, Shape s, Layout layout) {
    if (!gpu().ok) return state.SkipWithError(gpu().why.c_str());
    std::vector<void *> allocations;
    try {
        const ShapeBuffers &b = shape_buffers(s);
        auto vec = [&](uint64_t seed) {
            float *p = device_random(s.c, seed);
            allocations.push_back(p);
            return p;
        };
        float *scale = vec(5), *bias = vec(6), *rm = vec(7), *rv = vec(8), *sm = vec(9);
        float *si = vec(10), *dscale = vec(11), *dbias = vec(12);
        std::vector<float> ones(s.c, 1.0f);
        CUDA_OK(cudaMemcpy(rv, ones.data(), s.c * sizeof(float), cudaMemcpyHostToDevice));
        const cudnnBatchNormMode_t mode =
            layout == Layout::nhwc ? CUDNN_BATCHNORM_SPATIAL_PERSISTENT : CUDNN_BATCHNORM_SPATIAL;
        const cudnnBatchNormOps_t ops = CUDNN_BATCHNORM_OPS_BN;
        cudnnTensorDescriptor_t xd, pd;
        CUDNN_OK(cudnnCreateTensorDescriptor(&xd));
        CUDNN_OK(cudnnCreateTensorDescriptor(&pd));
        CUDNN_OK(cudnnSetTensor4dDescriptor(
            xd, layout == Layout::nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
            s.n, s.c, s.h, s.w));
        CUDNN_OK(cudnnDeriveBNTensorDescriptor(pd, xd, mode));
        size_t work_bytes = 0, reserve_bytes = 0;
        if (op == Op::TrainFwd)
            CUDNN_OK(cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
                gpu().cudnn, mode, ops, xd, nullptr, xd, pd, nullptr, &work_bytes));
        if (op == Op::Bwd)
            CUDNN_OK(cudnnGetBatchNormalizationBackwardExWorkspaceSize(
                gpu().cudnn, mode, ops, xd, xd, xd, nullptr, xd, pd, nullptr, &work_bytes));
        CUDNN_OK(cudnnGetBatchNormalizationTrainingExReserveSpaceSize(gpu().cudnn, mode, ops,
                                                                      nullptr, xd, &reserve_bytes));
        void *work = nullptr, *reserve = nullptr;
        for (auto [ptr, bytes] :
             {std::pair{&work, work_bytes}, std::pair{&reserve, reserve_bytes}}) {
            if (!bytes) continue;
            CUDA_OK(cudaMalloc(ptr, bytes));
            allocations.push_back(*ptr);
        }
        const float one = 1.0f, zero = 0.0f;
        const double eps = 1e-5;
        auto train = [&] {
            CUDNN_OK(cudnnBatchNormalizationForwardTrainingEx(
                gpu().cudnn, mode, ops, &one, &zero, xd, b.x, nullptr, nullptr, xd, b.y, pd, scale,
                bias, 0.1, rm, rv, eps, sm, si, nullptr, work, work_bytes, reserve, reserve_bytes));
        };
        if (op == Op::Bwd) train();  // the saved statistics and reserve space backward reads
        run_timed(state, op_bytes(op, s), [&] {
            if (op == Op::TrainFwd) {
                train();
            } else if (op == Op::EvalFwd) {
                CUDNN_OK(cudnnBatchNormalizationForwardInference(
                    gpu().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd, b.x, xd, b.y, pd, scale,
                    bias, rm, rv, eps));
            } else {
                CUDNN_OK(cudnnBatchNormalizationBackwardEx(
                    gpu().cudnn, mode, ops, &one, &zero, &one, &zero, xd, b.x, xd, b.y, xd, b.dy,
                    nullptr, nullptr, xd, b.dx, pd, scale, bias, dscale, dbias, eps, sm, si,
                    nullptr, work, work_bytes, reserve, reserve_bytes));
            }
        });
        cudnnDestroyTensorDescriptor(xd);
        cudnnDestroyTensorDescriptor(pd);
    } catch (const std::exception &e) {
        state.SkipWithError(e.what());
    }
    for (void *p : allocations) cudaFree(p);
}

// The floor: a device-to-device copy of the bytes the op must move (read + write).
void bench_copy(benchmark::State &state, Op op, Shape s) {
    if (!gpu().ok) return state.SkipWithError(gpu().why.c_str());
    try {
        const int64_t half = op_bytes(op, s) / 2;  // copy reads `half` and writes `half`
        char *a = nullptr, *b = nullptr;
        CUDA_OK(cudaMalloc(&a, half));
        CUDA_OK(cudaMalloc(&b, half));
        CUDA_OK(cudaMemset(a, 1, half));
        run_timed(state, op_bytes(op, s), [&] {
            CUDA_OK(cudaMemcpyAsync(b, a, half, cudaMemcpyDeviceToDevice, gpu().stream));
        });
        cudaFree(a);
        cudaFree(b);
    } catch (const std::exception &e) {
        state.SkipWithError(e.what());
    }
}

int register_all() {
    bn2d::bench::add_build_context();
    // Which cuDNN and which GPU the numbers are from (no GPU needed to ask).
    benchmark::AddCustomContext("cudnn_version", std::to_string(cudnnGetVersion()));
    int count = 0;
    cudaDeviceProp prop{};
    if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0 &&
        cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        benchmark::AddCustomContext("gpu", prop.name);
    for (const Shape &s : bn2d::bench::suite_shapes())
        for (Op op : bn2d::bench::kOps) {
            const std::string base = std::string(op_name(op)) + "/";
            for (Layout l : {Layout::nchw, Layout::nhwc}) {
                const std::string suffix = l == Layout::nhwc ? "_nhwc/" : "/";
                benchmark::RegisterBenchmark((base + "ours_cuda" + suffix + s.name()).c_str(),
                                             bench_ours, op, s, l)
                    ->UseManualTime()
                    ->Unit(benchmark::kMicrosecond);
                benchmark::RegisterBenchmark((base + "cudnn" + suffix + s.name()).c_str(),
                                             bench_cudnn, op, s, l)
                    ->UseManualTime()
                    ->Unit(benchmark::kMicrosecond);
            }
            benchmark::RegisterBenchmark((base + "copy/" + s.name()).c_str(), bench_copy, op, s)
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond);
        }
    return 0;
}
const int registered = register_all();

}  // namespace

BENCHMARK_MAIN();
