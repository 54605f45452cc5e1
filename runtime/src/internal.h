// Internals of the runtime: Halide buffer views, error capture, the kernel dispatch layer.
#pragma once

#include <string>

#include "HalideBuffer.h"
#include "HalideRuntime.h"
#include "bn2d/errors.h"
#include "bn2d/tensor.h"

namespace bn2d::detail {

// Installs the error handler and the ISA cap hook once (idempotent, thread-safe).
void init_runtime();

// Throws Error("<what>: <Halide's message>") if rc is a Halide error code.
void check_halide(int rc, const char *what);

// The Halide device interface of a device; nullptr for the CPU. Throws if not compiled in.
const halide_device_interface_t *device_interface(Device d);

// A non-owning halide_buffer_t over a Tensor or a module-owned Buffer.
struct HalideView {
    halide_buffer_t buf{};
    halide_dimension_t dim[4]{};
    bool wrapped_device = false;
    Device device = Device::CPU;

    HalideView() = default;
    HalideView(const HalideView &) = delete;
    HalideView &operator=(const HalideView &) = delete;
    ~HalideView();
    halide_buffer_t *get() { return &buf; }
};

// NCHW tensor -> Halide dims (w, h, c, n). With fuse_plane, a dense H x W plane is presented as
// one row of H*W elements (h extent 1), which the kernels vectorize without a row tail.
void view_nchw(const Tensor &t, bool fuse_plane, HalideView &out);
// The handle an application sees for a device allocation of ours: a CUdeviceptr, or a cl_mem
// (Halide's OpenCL buffers hold a wrapper struct in `device`, not the cl_mem itself).
uint64_t app_device_handle(Halide::Runtime::Buffer<float> &b, Device d);
// Host <-> device copies of a whole Buffer; no-ops on the CPU. Kernels write device memory
// through a copy of the halide_buffer_t, so sync_to_host() first marks the device side as the
// fresh one.
void sync_to_device(Halide::Runtime::Buffer<float> &b, Device d, const char *what);
void sync_to_host(Halide::Runtime::Buffer<float> &b, Device d, const char *what);
// A 1-D module buffer of C floats (host or device).
void view_vector(Halide::Runtime::Buffer<float> &b, Device d, HalideView &out);

// Kernel dispatch: picks the variant (mode, affine, mask) for the device and runs it.
void run_train_forward(Device d, bool affine, HalideView &x, HalideView &running_mean,
                       HalideView &running_var, float eps, float factor, HalideView *weight,
                       HalideView *bias, HalideView &y, HalideView &saved_mean,
                       HalideView &saved_invstd, HalideView &running_mean_out,
                       HalideView &running_var_out);
void run_eval_forward(Device d, bool affine, HalideView &x, HalideView &running_mean,
                      HalideView &running_var, float eps, HalideView *weight, HalideView *bias,
                      HalideView &y);
// training: mean/invstd_or_var = saved mean, saved invstd. eval: running_mean, running_var.
// grad_input null: not computed. grad_weight/grad_bias null: not computed; otherwise they are
// written as grad_*_in + the new gradient (accumulation, as autograd does).
void run_backward(Device d, bool training, bool affine, HalideView &x, HalideView &grad_out,
                  HalideView &mean, HalideView &invstd_or_var, float eps, HalideView *weight,
                  HalideView *grad_input, HalideView *grad_weight_in, HalideView *grad_bias_in,
                  HalideView *grad_weight, HalideView *grad_bias);

// The best compiled ISA variant this CPU supports under the cap; records it as the last used.
CpuIsa select_cpu_isa();

}  // namespace bn2d::detail
