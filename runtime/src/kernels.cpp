// The kernel dispatch layer: one table of AOT kernels per device, variant picked by mode,
// affine and output mask. The variant list matches cmake/Bn2dKernels.cmake.
#include "internal.h"

#include "bn2d_eval_bwd_full_f32_nchw_cpu.h"
#include "bn2d_eval_bwd_input_affine_f32_nchw_cpu.h"
#include "bn2d_eval_bwd_input_plain_f32_nchw_cpu.h"
#include "bn2d_eval_bwd_params_f32_nchw_cpu.h"
#include "bn2d_eval_fwd_affine_f32_nchw_cpu.h"
#include "bn2d_eval_fwd_plain_f32_nchw_cpu.h"
#include "bn2d_train_bwd_full_f32_nchw_cpu.h"
#include "bn2d_train_bwd_input_affine_f32_nchw_cpu.h"
#include "bn2d_train_bwd_input_plain_f32_nchw_cpu.h"
#include "bn2d_train_bwd_params_f32_nchw_cpu.h"
#include "bn2d_train_fwd_affine_f32_nchw_cpu.h"
#include "bn2d_train_fwd_plain_f32_nchw_cpu.h"
#if BN2D_HAVE_GPU
#include "bn2d_eval_bwd_full_f32_nchw_cuda.h"
#include "bn2d_eval_bwd_input_affine_f32_nchw_cuda.h"
#include "bn2d_eval_bwd_input_plain_f32_nchw_cuda.h"
#include "bn2d_eval_bwd_params_f32_nchw_cuda.h"
#include "bn2d_eval_fwd_affine_f32_nchw_cuda.h"
#include "bn2d_eval_fwd_plain_f32_nchw_cuda.h"
#include "bn2d_train_bwd_full_f32_nchw_cuda.h"
#include "bn2d_train_bwd_input_affine_f32_nchw_cuda.h"
#include "bn2d_train_bwd_input_plain_f32_nchw_cuda.h"
#include "bn2d_train_bwd_params_f32_nchw_cuda.h"
#include "bn2d_train_fwd_affine_f32_nchw_cuda.h"
#include "bn2d_train_fwd_plain_f32_nchw_cuda.h"
#include "bn2d_eval_bwd_full_f32_nchw_opencl.h"
#include "bn2d_eval_bwd_input_affine_f32_nchw_opencl.h"
#include "bn2d_eval_bwd_input_plain_f32_nchw_opencl.h"
#include "bn2d_eval_bwd_params_f32_nchw_opencl.h"
#include "bn2d_eval_fwd_affine_f32_nchw_opencl.h"
#include "bn2d_eval_fwd_plain_f32_nchw_opencl.h"
#include "bn2d_train_bwd_full_f32_nchw_opencl.h"
#include "bn2d_train_bwd_input_affine_f32_nchw_opencl.h"
#include "bn2d_train_bwd_input_plain_f32_nchw_opencl.h"
#include "bn2d_train_bwd_params_f32_nchw_opencl.h"
#include "bn2d_train_fwd_affine_f32_nchw_opencl.h"
#include "bn2d_train_fwd_plain_f32_nchw_opencl.h"
#endif

namespace bn2d::detail {
namespace {

// Every backend's kernels have the same signatures; the CPU ones name the types.
struct KernelTable {
    decltype(&bn2d_train_fwd_affine_f32_nchw_cpu) train_fwd_affine;
    decltype(&bn2d_train_fwd_plain_f32_nchw_cpu) train_fwd_plain;
    decltype(&bn2d_eval_fwd_affine_f32_nchw_cpu) eval_fwd_affine;
    decltype(&bn2d_eval_fwd_plain_f32_nchw_cpu) eval_fwd_plain;
    decltype(&bn2d_train_bwd_full_f32_nchw_cpu) train_bwd_full;
    decltype(&bn2d_train_bwd_input_affine_f32_nchw_cpu) train_bwd_input_affine;
    decltype(&bn2d_train_bwd_input_plain_f32_nchw_cpu) train_bwd_input_plain;
    decltype(&bn2d_train_bwd_params_f32_nchw_cpu) train_bwd_params;
    decltype(&bn2d_eval_bwd_full_f32_nchw_cpu) eval_bwd_full;
    decltype(&bn2d_eval_bwd_input_affine_f32_nchw_cpu) eval_bwd_input_affine;
    decltype(&bn2d_eval_bwd_input_plain_f32_nchw_cpu) eval_bwd_input_plain;
    decltype(&bn2d_eval_bwd_params_f32_nchw_cpu) eval_bwd_params;
};

// CPU: Halide's multitarget wrapper (bn2d_*_cpu) decides once per process and caches its
// choice, so it cannot honour set_max_cpu_isa() or report what it picked. We call the
// per-ISA entry points the multitarget build also emits (`<name>-<target>-no_runtime`), in
// the same order of preference, after the same Halide CPU-feature check (cpu_supports()).
// Those names are not C identifiers, so CMake generates an assembly file of tail-call
// aliases, <name>_<isa> (cmake/Bn2dKernels.cmake, from BN2D_CPU_TARGETS).
#define BN2D_DECLARE_ISA(name, isa) extern "C" decltype(name) name##_##isa;
#define BN2D_DECLARE_ALL(isa)                                                            \
    BN2D_DECLARE_ISA(bn2d_train_fwd_affine_f32_nchw_cpu, isa)                            \
    BN2D_DECLARE_ISA(bn2d_train_fwd_plain_f32_nchw_cpu, isa)                             \
    BN2D_DECLARE_ISA(bn2d_eval_fwd_affine_f32_nchw_cpu, isa)                             \
    BN2D_DECLARE_ISA(bn2d_eval_fwd_plain_f32_nchw_cpu, isa)                              \
    BN2D_DECLARE_ISA(bn2d_train_bwd_full_f32_nchw_cpu, isa)                              \
    BN2D_DECLARE_ISA(bn2d_train_bwd_input_affine_f32_nchw_cpu, isa)                      \
    BN2D_DECLARE_ISA(bn2d_train_bwd_input_plain_f32_nchw_cpu, isa)                       \
    BN2D_DECLARE_ISA(bn2d_train_bwd_params_f32_nchw_cpu, isa)                            \
    BN2D_DECLARE_ISA(bn2d_eval_bwd_full_f32_nchw_cpu, isa)                               \
    BN2D_DECLARE_ISA(bn2d_eval_bwd_input_affine_f32_nchw_cpu, isa)                       \
    BN2D_DECLARE_ISA(bn2d_eval_bwd_input_plain_f32_nchw_cpu, isa)                        \
    BN2D_DECLARE_ISA(bn2d_eval_bwd_params_f32_nchw_cpu, isa)
}  // namespace
}  // namespace bn2d::detail
BN2D_DECLARE_ALL(avx512)
BN2D_DECLARE_ALL(avx2)
BN2D_DECLARE_ALL(sse41)
BN2D_DECLARE_ALL(baseline)
namespace bn2d::detail {
namespace {

#define BN2D_KERNEL_TABLE(B)                                                                     \
    KernelTable {                                                                                \
        bn2d_train_fwd_affine_f32_nchw_##B, bn2d_train_fwd_plain_f32_nchw_##B,                   \
            bn2d_eval_fwd_affine_f32_nchw_##B, bn2d_eval_fwd_plain_f32_nchw_##B,                 \
            bn2d_train_bwd_full_f32_nchw_##B, bn2d_train_bwd_input_affine_f32_nchw_##B,          \
            bn2d_train_bwd_input_plain_f32_nchw_##B, bn2d_train_bwd_params_f32_nchw_##B,         \
            bn2d_eval_bwd_full_f32_nchw_##B, bn2d_eval_bwd_input_affine_f32_nchw_##B,            \
            bn2d_eval_bwd_input_plain_f32_nchw_##B, bn2d_eval_bwd_params_f32_nchw_##B            \
    }

const KernelTable &cpu_table() {
    static const KernelTable avx512 = BN2D_KERNEL_TABLE(cpu_avx512);
    static const KernelTable avx2 = BN2D_KERNEL_TABLE(cpu_avx2);
    static const KernelTable sse41 = BN2D_KERNEL_TABLE(cpu_sse41);
    static const KernelTable baseline = BN2D_KERNEL_TABLE(cpu_baseline);
    const CpuIsa isa = select_cpu_isa();
    switch (isa) {
    case CpuIsa::AVX512: return avx512;
    case CpuIsa::AVX2: return avx2;
    case CpuIsa::SSE41: return sse41;
    case CpuIsa::Baseline: break;
    }
    return baseline;
}

const KernelTable &table(Device d) {
    if (d == Device::CPU) return cpu_table();
#if BN2D_HAVE_GPU
    static const KernelTable cuda = BN2D_KERNEL_TABLE(cuda);
    static const KernelTable opencl = BN2D_KERNEL_TABLE(opencl);
    if (d == Device::Cuda) return cuda;
    if (d == Device::OpenCL) return opencl;
#endif
    throw Error(std::string(device_name(d)) + ": built without GPU support (BN2D_GPU=OFF)");
}

void run(Device d, int rc, const char *kernel) {
    check_halide(rc, (std::string(kernel) + " (" + device_name(d) + ")").c_str());
}

}  // namespace

void run_train_forward(Device d, bool affine, HalideView &x, HalideView &running_mean,
                       HalideView &running_var, float eps, float factor, HalideView *weight,
                       HalideView *bias, HalideView &y, HalideView &saved_mean,
                       HalideView &saved_invstd, HalideView &running_mean_out,
                       HalideView &running_var_out) {
    const KernelTable &k = table(d);
    if (affine) {
        run(d,
            k.train_fwd_affine(x.get(), running_mean.get(), running_var.get(), eps, factor,
                               weight->get(), bias->get(), y.get(), saved_mean.get(),
                               saved_invstd.get(), running_mean_out.get(), running_var_out.get()),
            "training forward");
    } else {
        run(d,
            k.train_fwd_plain(x.get(), running_mean.get(), running_var.get(), eps, factor, y.get(),
                              saved_mean.get(), saved_invstd.get(), running_mean_out.get(),
                              running_var_out.get()),
            "training forward");
    }
}

void run_eval_forward(Device d, bool affine, HalideView &x, HalideView &running_mean,
                      HalideView &running_var, float eps, HalideView *weight, HalideView *bias,
                      HalideView &y) {
    const KernelTable &k = table(d);
    if (affine) {
        run(d,
            k.eval_fwd_affine(x.get(), running_mean.get(), running_var.get(), eps, weight->get(),
                              bias->get(), y.get()),
            "eval forward");
    } else {
        run(d, k.eval_fwd_plain(x.get(), running_mean.get(), running_var.get(), eps, y.get()),
            "eval forward");
    }
}

void run_backward(Device d, bool training, bool affine, HalideView &x, HalideView &grad_out,
                  HalideView &mean, HalideView &invstd_or_var, float eps, HalideView *weight,
                  HalideView *grad_input, HalideView *grad_weight_in, HalideView *grad_bias_in,
                  HalideView *grad_weight, HalideView *grad_bias) {
    const KernelTable &k = table(d);
    const bool params = grad_weight != nullptr;
    const char *what = training ? "training backward" : "eval backward";
    if (params && !affine) throw Error("backward: parameter gradients need affine=true");
    if (!params && !grad_input) return;  // nothing requested
    halide_buffer_t *X = x.get(), *DY = grad_out.get(), *M = mean.get(), *S = invstd_or_var.get();
    int rc;
    if (params && grad_input) {
        auto f = training ? k.train_bwd_full : k.eval_bwd_full;
        rc = f(X, DY, M, S, eps, weight->get(), grad_weight_in->get(), grad_bias_in->get(),
               grad_input->get(), grad_weight->get(), grad_bias->get());
    } else if (params) {
        auto f = training ? k.train_bwd_params : k.eval_bwd_params;
        rc = f(X, DY, M, S, eps, weight->get(), grad_weight_in->get(), grad_bias_in->get(),
               grad_weight->get(), grad_bias->get());
    } else if (affine) {
        auto f = training ? k.train_bwd_input_affine : k.eval_bwd_input_affine;
        rc = f(X, DY, M, S, eps, weight->get(), grad_input->get());
    } else {
        auto f = training ? k.train_bwd_input_plain : k.eval_bwd_input_plain;
        rc = f(X, DY, M, S, eps, grad_input->get());
    }
    run(d, rc, what);
}

}  // namespace bn2d::detail
