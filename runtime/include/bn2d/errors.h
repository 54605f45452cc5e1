// The one exception type of the library, and global run-time settings (threads, CPU ISA, GPU).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "bn2d/tensor.h"

namespace bn2d {

// Every failure: bad arguments, kernel errors reported by Halide, missing GPU or driver.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// ---- CPU ----
// The ISA variants compiled into every CPU kernel library, best first. Halide's multitarget
// wrapper picks the best the CPU supports; set_max_cpu_isa() caps that choice (also from the
// environment: BN2D_MAX_CPU_ISA=avx512|avx2|sse41|baseline).
enum class CpuIsa { AVX512, AVX2, SSE41, Baseline };
const char *isa_name(CpuIsa isa);
CpuIsa isa_from_name(const std::string &name);  // throws Error on an unknown name
std::vector<CpuIsa> compiled_cpu_isas();        // all variants, best first
bool cpu_supports(CpuIsa isa);                  // this CPU can run the variant
void set_max_cpu_isa(CpuIsa isa);               // throws Error if this CPU cannot run it
CpuIsa max_cpu_isa();
CpuIsa last_cpu_isa_used();  // the variant Halide's dispatch picked on the last CPU call

// Worker threads for CPU kernels; 0 means one per core (the default).
void set_num_threads(int n);
int num_threads();

// ---- GPU ----
// Whether kernels can run on this device now (driver, device present). Never throws.
bool device_available(Device device);
// Why device_available() is false ("" if it is true).
std::string device_unavailable_reason(Device device);
// Run CUDA kernels in the application's context and stream (CUcontext, CUstream), so an app
// that already uses CUDA, or PyTorch, can call us on its stream. nullptr restores Halide's own.
void use_cuda_context(void *cu_context, void *cu_stream);
// Wait until queued device work is done.
void device_synchronize(Device device);

}  // namespace bn2d
