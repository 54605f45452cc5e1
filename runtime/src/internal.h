// Internals of the module: Halide buffers over Tensors, error capture, kernel dispatch.
#pragma once

#include <string>

#include "HalideBuffer.h"
#include "HalideRuntime.h"
#include "bn2d/errors.h"
#include "bn2d/settings.h"
#include "bn2d/tensor.h"

namespace bn2d::detail {

using HalideBuffer = Halide::Runtime::Buffer<float>;

// ---- Halide glue (halide_glue.cpp) ----
// Installs the error handler once and reads the environment (BN2D_MAX_CPU_ISA, BN2D_VERBOSE).
void init_runtime();
// Throws Error("<what>: <Halide's message>") if rc is a Halide error code.
void check_halide(int rc, const std::string &what);
// The Halide device interface of a device; nullptr for the CPU. Throws if not compiled in.
const halide_device_interface_t *device_interface(Device d);

// A non-owning Halide buffer over an NCHW Tensor, dims (w, h, c, n); a device tensor's pointer
// is wrapped (and detached when the buffer goes). With fuse_plane, a dense H x W plane is one
// row of H*W elements (h extent 1), which the kernels vectorize without a row tail.
HalideBuffer nchw_buffer(const Tensor &t, bool fuse_plane);
// The handle an application sees for a device allocation of ours: a CUdeviceptr, or a cl_mem
// (Halide's OpenCL buffers hold a wrapper struct in `device`, not the cl_mem itself).
uint64_t app_device_handle(HalideBuffer &b, Device d);
// Host <-> device copies of a whole buffer; no-ops on the CPU.
void sync_to_device(HalideBuffer &b, Device d, const char *what);
void sync_to_host(HalideBuffer &b, Device d, const char *what);

// ---- settings (settings.cpp) ----
// The best compiled ISA variant this CPU supports under the cap; records it as the last used.
CpuIsa select_cpu_isa();
void init_settings_from_environment();

// ---- kernel dispatch (dispatch.cpp) ----
// Each picks the kernel of the variant table for the device (and, on the CPU, the ISA), runs
// it, and throws on error. `x` is the caller's input tensor, for BN2D_VERBOSE's line.
void run_train_forward(Device d, const Tensor &x, halide_buffer_t *x_buf, halide_buffer_t *weight,
                       halide_buffer_t *bias, halide_buffer_t *running_mean,
                       halide_buffer_t *running_var, float eps, float factor, halide_buffer_t *y,
                       halide_buffer_t *saved_mean, halide_buffer_t *saved_invstd,
                       halide_buffer_t *running_mean_out, halide_buffer_t *running_var_out);
void run_eval_forward(Device d, const Tensor &x, halide_buffer_t *x_buf, halide_buffer_t *weight,
                      halide_buffer_t *bias, halide_buffer_t *running_mean,
                      halide_buffer_t *running_var, float eps, halide_buffer_t *y);
// training: mean/stat = saved mean, saved invstd. eval: running_mean, running_var.
// grad_input null: not wanted. grad_weight/grad_bias are written as grad_*_in + this call's
// gradient when want_params; otherwise they may still be written (training backward computes
// the sums anyway), so they must be scratch the caller does not commit.
struct BackwardBuffers {
    halide_buffer_t *x, *grad_out, *mean, *stat, *weight;
    halide_buffer_t *grad_input;  // nullable
    halide_buffer_t *grad_weight_in, *grad_bias_in, *grad_weight, *grad_bias;
};
void run_backward(Device d, bool training, bool want_params, const Tensor &x, float eps,
                  const BackwardBuffers &b);

}  // namespace bn2d::detail
