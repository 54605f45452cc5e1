// Process-wide run-time settings: CPU ISA cap, threads, verbose mode, and what was built.
#pragma once

#include <string>
#include <vector>

#include "bn2d/cpu_isa.h"  // generated from generators/variants.cmake

namespace bn2d {

// ---- CPU ISA ----
// CpuIsa lists the ISA variants compiled into every CPU kernel library, best first. The best
// one this CPU supports runs, unless capped by set_max_cpu_isa() or the environment
// (BN2D_MAX_CPU_ISA=<name>, read at the first call).
const char *isa_name(CpuIsa isa);
CpuIsa isa_from_name(const std::string &name);  // throws Error on an unknown name
std::vector<CpuIsa> compiled_cpu_isas();        // all variants, best first
bool cpu_supports(CpuIsa isa);                  // this CPU can run the variant
void set_max_cpu_isa(CpuIsa isa);               // throws Error if this CPU cannot run it
CpuIsa max_cpu_isa();
CpuIsa last_cpu_isa_used();  // the variant that ran on this thread's last CPU call

// ---- threads ----
// Worker threads for CPU kernels; 0 means one per core (the default), at most 256 (Halide's
// thread pool; more throws Error).
void set_num_threads(int n);
int num_threads();

// ---- verbose mode ----
// Like ONEDNN_VERBOSE: with BN2D_VERBOSE=1 in the environment (or set_verbose(true)), every
// kernel call prints one line on stderr:
//   bn2d_verbose,exec,<op>,<kernel>,<backend>:<isa>,<N>x<C>x<H>x<W>,<layout>,<dtype>,<ms>
// GPU calls are synchronized so that the time is the kernel's. Off, it costs one relaxed
// atomic load per call.
void set_verbose(bool on);
bool verbose();

// ---- what was built ----
struct BuildInfo {
    std::string halide_version;
    std::string schedule_machine;  // schedules/machines/<machine>.params
    std::string schedule_file;
    std::string cpu_targets;       // Halide targets of the CPU libraries, best first
    std::string cuda_target, opencl_target;  // empty when built without GPU support
    std::vector<std::string> kernels;         // <kernel>_<dtype>_<layout>, from the variant table
};
const BuildInfo &build_info();

}  // namespace bn2d
