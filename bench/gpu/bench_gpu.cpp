// GPU benchmarks: our CUDA kernels vs cuDNN's batch normalization vs a device-to-device copy of
// the same bytes, on the suite shapes, timed with CUDA events on one stream (ours run on it
// through bn2d::use_cuda_context). Without a usable NVIDIA GPU every benchmark is skipped with
// the reason. PyTorch CUDA is not a peer here: Debian's libtorch is CPU-only.
#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../suite.h"
#include "bn2d/bn2d.h"

namespace {

using bn2d::bench::Op;
using bn2d::bench::op_bytes;
using bn2d::bench::op_name;
using bn2d::bench::Shape;

#define CUDA_OK(x)                                                                         \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) throw std::runtime_error(std::string(#x) + ": " + cudaGetErrorString(e_)); \
    } while (0)
#define CUDNN_OK(x)                                                                        \
    do {                                                                                   \
        cudnnStatus_t s_ = (x);                                                            \
        if (s_ != CUDNN_STATUS_SUCCESS) throw std::runtime_error(std::string(#x) + ": " + cudnnGetErrorString(s_)); \
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
        auto get_current = libcuda ? reinterpret_cast<GetCurrent>(dlsym(libcuda, "cuCtxGetCurrent")) : nullptr;
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

float *device_random(int64_t n, unsigned seed) {
    std::vector<float> h(n);
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.3f, 1.5f);
    for (float &v : h) v = d(rng);
    float *p = nullptr;
    CUDA_OK(cudaMalloc(&p, n * sizeof(float)));
    CUDA_OK(cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    return p;
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
    state.SetBytesProcessed(state.iterations() * bytes);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

void bench_ours(benchmark::State &state, Op op, Shape s) {
    if (!gpu().ok) return state.SkipWithError(gpu().why.c_str());
    try {
        float *x = device_random(s.numel(), 1), *y = device_random(s.numel(), 2);
        float *dy = device_random(s.numel(), 3), *dx = device_random(s.numel(), 4);
        std::vector<int64_t> sizes = {s.n, s.c, s.h, s.w};
        auto view = [&](float *p) {
            return bn2d::Tensor::on_device(reinterpret_cast<uint64_t>(p), sizes, bn2d::Device::Cuda);
        };
        bn2d::BatchNorm2d bn(s.c);
        bn.to(bn2d::Device::Cuda);
        if (op == Op::EvalFwd) bn.eval();
        bn.forward(view(x), view(y));
        run_timed(state, op_bytes(op, s), [&] {
            if (op == Op::Bwd) {
                bn.backward(view(dy), view(dx));
            } else {
                bn.forward(view(x), view(y));
            }
        });
        for (float *p : {x, y, dy, dx}) cudaFree(p);
    } catch (const std::exception &e) {
        state.SkipWithError(e.what());
    }
}

void bench_cudnn(benchmark::State &state, Op op, Shape s) {
    if (!gpu().ok) return state.SkipWithError(gpu().why.c_str());
    try {
        float *x = device_random(s.numel(), 1), *y = device_random(s.numel(), 2);
        float *dy = device_random(s.numel(), 3), *dx = device_random(s.numel(), 4);
        float *scale = device_random(s.c, 5), *bias = device_random(s.c, 6);
        float *rm = device_random(s.c, 7), *rv = nullptr, *sm = device_random(s.c, 8);
        float *si = device_random(s.c, 9), *dscale = device_random(s.c, 10), *dbias = device_random(s.c, 11);
        std::vector<float> ones(s.c, 1.0f);
        CUDA_OK(cudaMalloc(&rv, s.c * sizeof(float)));
        CUDA_OK(cudaMemcpy(rv, ones.data(), s.c * sizeof(float), cudaMemcpyHostToDevice));
        cudnnTensorDescriptor_t xd, pd;
        CUDNN_OK(cudnnCreateTensorDescriptor(&xd));
        CUDNN_OK(cudnnCreateTensorDescriptor(&pd));
        CUDNN_OK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s.n, s.c, s.h, s.w));
        CUDNN_OK(cudnnDeriveBNTensorDescriptor(pd, xd, CUDNN_BATCHNORM_SPATIAL));
        const float one = 1.0f, zero = 0.0f;
        const double eps = 1e-5;
        run_timed(state, op_bytes(op, s), [&] {
            if (op == Op::TrainFwd) {
                CUDNN_OK(cudnnBatchNormalizationForwardTraining(
                    gpu().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd, x, xd, y, pd, scale, bias,
                    0.1, rm, rv, eps, sm, si));
            } else if (op == Op::EvalFwd) {
                CUDNN_OK(cudnnBatchNormalizationForwardInference(
                    gpu().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd, x, xd, y, pd, scale, bias,
                    rm, rv, eps));
            } else {
                CUDNN_OK(cudnnBatchNormalizationBackward(
                    gpu().cudnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &zero, xd, x, xd, dy, xd,
                    dx, pd, scale, dscale, dbias, eps, sm, si));
            }
        });
        cudnnDestroyTensorDescriptor(xd);
        cudnnDestroyTensorDescriptor(pd);
        for (float *p : {x, y, dy, dx, scale, bias, rm, rv, sm, si, dscale, dbias}) cudaFree(p);
    } catch (const std::exception &e) {
        state.SkipWithError(e.what());
    }
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
    for (const Shape &s : bn2d::bench::suite_shapes())
        for (Op op : bn2d::bench::kOps) {
            const std::string base = std::string(op_name(op)) + "/";
            benchmark::RegisterBenchmark((base + "ours_cuda/" + s.name()).c_str(), bench_ours, op, s)
                ->UseManualTime()->Unit(benchmark::kMicrosecond);
            benchmark::RegisterBenchmark((base + "cudnn/" + s.name()).c_str(), bench_cudnn, op, s)
                ->UseManualTime()->Unit(benchmark::kMicrosecond);
            benchmark::RegisterBenchmark((base + "copy/" + s.name()).c_str(), bench_copy, op, s)
                ->UseManualTime()->Unit(benchmark::kMicrosecond);
        }
    return 0;
}
const int registered = register_all();

}  // namespace

BENCHMARK_MAIN();
