// Process-wide run-time settings: CPU ISA cap, threads, verbose mode, and what was built.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bn2d/cpu_isa.h"  // generated from generators/variants.cmake

namespace bn2d {

// ---- CPU ISA ----
// CpuIsa lists the ISA variants compiled into every CPU kernel library, best first. The best
// one this CPU supports runs, unless capped by set_max_cpu_isa() or the environment
// (BN2D_MAX_CPU_ISA=<name>, read at the first call).
//
// The cap is a cap, as ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY: calls run the best ISA at or
// below it that this CPU supports, so a cap above the CPU's best (avx512 on an AVX2-only CPU)
// is accepted and means that best. max_cpu_isa() reports the ISA calls will use, never more
// than the CPU runs, and set_max_cpu_isa(max_cpu_isa()) always restores it. To know whether an
// exact ISA can run, ask cpu_supports().
const char *isa_name(CpuIsa isa);
CpuIsa isa_from_name(const std::string &name);  // throws Error on an unknown name
std::vector<CpuIsa> compiled_cpu_isas();        // all variants, best first
bool cpu_supports(CpuIsa isa);                  // this CPU can run the variant
CpuIsa best_cpu_isa();                          // the best variant this CPU can run
void set_max_cpu_isa(CpuIsa cap);               // throws Error only on a value that is no CpuIsa
CpuIsa max_cpu_isa();        // the variant calls use now (the cap as this CPU meets it)
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

// ---- streaming stores (CPU) ----
// A store to a cache line that is not in cache first reads the line (read for ownership): an
// output written to DRAM with ordinary stores costs 1.5x its bytes. The kernels marked
// STREAMING in generators/variants.cmake (forward's y, backward's grad_input; float32 and
// bfloat16, NCHW and NHWC) also exist with non-temporal stores to that output, which write
// whole lines without reading them but bypass the cache, so they lose when the output would
// have stayed there.
//   automatic (default): stream when the call's tensors do not fit the last-level cache
//   always:              stream whenever a streaming kernel can run (tests, measurements)
//   never:               ordinary stores only
// Either way a call streams only when its output is line-aligned: the data 64-byte aligned and
// every row a whole number of 64-byte lines (as PyTorch's and aligned_alloc'd tensors are for
// widths that are multiples of 16 float32 values). Environment: BN2D_STREAMING_STORES=
// auto|always|never, read at the first call.
enum class StreamingStores { automatic, always, never };
void set_streaming_stores(StreamingStores mode);
StreamingStores streaming_stores();
// Whether this thread's last CPU kernel call wrote its tensor output with streaming stores.
bool last_call_streamed();
// automatic streams a call when the bytes of its tensors exceed this: the last-level cache
// (sysfs, else sysconf, else 32 MiB).
int64_t streaming_threshold_bytes();

// ---- CPU strategy ----
// How a training forward or backward of NCHW tensors runs on the CPU:
//   fused:  one kernel; each parallel task sums a group of channels, then normalizes it (or
//           computes its grad_input) while it is still in cache: one pass over DRAM, but a
//           channel's rows are read a channel stride apart
//   split:  two kernels that both read in memory order: the per-channel sums, then the
//           pointwise pass (SyncBatchNorm2d's path with one process); x is read twice
//   automatic (default): split where there are at least 16 channels (the split kernels
//           parallelize over channel groups only) and either the planes (H*W) are short, at
//           most the machine file's runtime.<op>.split_max_plane (schedules/machines/*.params;
//           a training forward that adds a residual: runtime.train_fwd.split_max_plane_add),
//           or the call's tensors fit the cache (split_max_cache_bytes: the second pass reads
//           x from the cache); else fused
// Channels_last, strided, 64-bit-indexed and GPU calls always run their one kernel.
// BN2D_VERBOSE names the kernels that ran (split_stats, split_bwd_sums). Environment:
// BN2D_CPU_STRATEGY=auto|fused|split, read at the first call.
enum class CpuStrategy { automatic, fused, split };
void set_cpu_strategy(CpuStrategy strategy);  // throws Error on a value that is no CpuStrategy
CpuStrategy cpu_strategy();
// automatic's thresholds, from the machine file the kernels were built with: the largest H*W
// that training forward (backward) splits; `residual`: a forward that adds one (forward_add;
// backward's is the same either way); 0: never.
int64_t split_max_plane(bool backward, bool residual = false);
// automatic also splits a training forward (backward) whose tensors fit in this many bytes:
// runtime.<op>.split_max_cache_percent of the last-level cache (streaming_threshold_bytes()),
// counting the tensors as the streaming-store rule does (forward: x, y and a residual;
// backward: x, grad_out, grad_input and the ReLU's output); 0: never.
int64_t split_max_cache_bytes(bool backward);
// What this thread's last training call that had the choice ran (CPU, NCHW, 32-bit indexing):
// fused or split; automatic before any such call.
CpuStrategy last_cpu_strategy_used();

// ---- what was built ----
struct BuildInfo {
    std::string halide_version;
    std::string schedule_machine;  // schedules/machines/<machine>.params
    std::string schedule_file;
    std::string cpu_targets;   // Halide targets of the CPU libraries, best first
    std::string cpu_isa_best;  // the best of them this CPU runs (calls use it unless capped)
    std::string cuda_target, opencl_target;     // empty when that backend's kernels are not built
    std::vector<std::string> kernels;           // <kernel>_<dtype>_<layout>, from the variant table
    std::vector<std::string> cpu_only_kernels;  // those without GPU or large_buffers builds
    std::vector<std::string> streaming_kernels;  // those also built with streaming stores,
    std::vector<std::string> streaming_isas;     // for these CPU ISAs
};
const BuildInfo &build_info();

}  // namespace bn2d
