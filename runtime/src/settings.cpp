// Process-wide settings: the CPU ISA cap and choice, threads, verbose mode, build facts. The ISA
// list and its features come from the variant table (bn2d_kernel_table.h).
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "bn2d_kernel_table.h"
#include "internal.h"

namespace bn2d {
namespace {

constexpr int kIsaCount = static_cast<int>(sizeof(detail::kCpuIsas) / sizeof(detail::kCpuIsas[0]));

// Read on every kernel call, possibly from several threads.
std::atomic<int> g_max_isa{-1};  // index into kCpuIsas of the ISA calls use; -1: not yet known
std::atomic<bool> g_verbose{false};
thread_local int g_last_isa = kIsaCount - 1;
std::atomic<int> g_streaming{static_cast<int>(StreamingStores::automatic)};
std::atomic<int> g_strategy{static_cast<int>(CpuStrategy::automatic)};
thread_local bool g_last_streamed = false;
thread_local int g_last_strategy = static_cast<int>(CpuStrategy::automatic);

// Halide's CPU feature check, as its multitarget wrappers make it: one 64-bit word per 64
// features.
bool cpu_has(const halide_target_feature_t *features) {
    constexpr int kWords = (halide_target_feature_end + 63) / 64;
    uint64_t words[kWords] = {};
    for (const halide_target_feature_t *f = features; *f != halide_target_feature_end; ++f)
        words[*f / 64] |= uint64_t(1) << (*f % 64);
    return halide_default_can_use_target_features(kWords, words) != 0;
}

// The last-level cache in bytes: sysfs first (glibc's sysconf reported 10x the L3 on the EPYC
// VM, the host's total), then sysconf, then 32 MiB.
int64_t last_level_cache_bytes() {
    static const int64_t bytes = [] {
        for (const char *index : {"index3", "index2"}) {
            std::ifstream f(std::string("/sys/devices/system/cpu/cpu0/cache/") + index + "/size");
            int64_t v = 0;
            char unit = 0;
            if (f >> v) {
                f >> unit;
                if (unit == 'K')
                    v <<= 10;
                else if (unit == 'M')
                    v <<= 20;
                if (v > 0) return v;
            }
        }
#ifdef _SC_LEVEL3_CACHE_SIZE
        if (const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE); l3 > 0) return int64_t(l3);
#endif
        return int64_t(32) << 20;
    }();
    return bytes;
}

// Whether this CPU runs each ISA of the table, checked once.
const std::array<bool, kIsaCount> &supported_isas() {
    static const auto supported = [] {
        std::array<bool, kIsaCount> s{};
        for (int i = 0; i < kIsaCount; ++i) s[i] = cpu_has(detail::kCpuIsas[i].features);
        return s;
    }();
    return supported;
}

// The ISA a cap means: the best at or below it that this CPU runs (the last runs anywhere).
int effective_isa(int cap) {
    while (cap < kIsaCount - 1 && !supported_isas()[cap]) ++cap;
    return cap;
}

// The ISA calls use: set by set_max_cpu_isa() or BN2D_MAX_CPU_ISA, else the best this CPU runs.
int current_isa() {
    const int isa = g_max_isa.load(std::memory_order_relaxed);
    return isa >= 0 ? isa : effective_isa(0);
}

std::string isa_names() {
    std::string s;
    for (const auto &e : detail::kCpuIsas) s += (s.empty() ? "" : ", ") + std::string(e.name);
    return s;
}

// An environment variable naming one of `choices`: its value into `setting`. An unknown name
// must not make every call fail: it is reported once and ignored.
void read_choice(const char *variable, const std::vector<std::pair<std::string, int>> &choices,
                 std::atomic<int> &setting) {
    const char *env = std::getenv(variable);
    if (!env || !*env) return;
    std::string expected;
    for (const auto &[name, value] : choices) {
        if (env == name) {
            setting = value;
            return;
        }
        expected += (expected.empty() ? "" : ", ") + name;
    }
    std::fprintf(stderr, "bn2d: ignoring %s=%s (expected %s)\n", variable, env, expected.c_str());
}

}  // namespace

namespace detail {

void init_settings_from_environment() {
    if (const char *env = std::getenv("BN2D_MAX_CPU_ISA"); env && *env) {
        // A cap, as ONEDNN_MAX_CPU_ISA: above what this CPU runs means the best it runs. An
        // unknown name must not make every call fail: warn once, ignore it.
        int found = -1;
        for (int i = 0; i < kIsaCount; ++i)
            if (std::string(env) == kCpuIsas[i].name) found = i;
        if (found < 0)
            std::fprintf(stderr, "bn2d: ignoring BN2D_MAX_CPU_ISA=%s (expected one of %s)\n", env,
                         isa_names().c_str());
        else
            g_max_isa = effective_isa(found);
    }
    read_choice("BN2D_STREAMING_STORES",
                {{"auto", static_cast<int>(StreamingStores::automatic)},
                 {"always", static_cast<int>(StreamingStores::always)},
                 {"never", static_cast<int>(StreamingStores::never)}},
                g_streaming);
    read_choice("BN2D_CPU_STRATEGY",
                {{"auto", static_cast<int>(CpuStrategy::automatic)},
                 {"fused", static_cast<int>(CpuStrategy::fused)},
                 {"split", static_cast<int>(CpuStrategy::split)}},
                g_strategy);
    if (const char *env = std::getenv("BN2D_VERBOSE"); env && *env && std::string(env) != "0") {
        g_verbose = true;
        const BuildInfo &b = build_info();
        std::fprintf(
            stderr,
            "bn2d_verbose,info,halide %s,schedule %s,cpu %s,cpu isa %s,cuda %s,opencl %s\n"
            "bn2d_verbose,info,format: exec,op,kernel,backend:isa,NxCxHxW,layout,dtype,ms\n",
            b.halide_version.c_str(), b.schedule_machine.c_str(), b.cpu_targets.c_str(),
            isa_name(static_cast<CpuIsa>(current_isa())),
            b.cuda_target.empty() ? "-" : b.cuda_target.c_str(),
            b.opencl_target.empty() ? "-" : b.opencl_target.c_str());
    }
}

CpuIsa select_cpu_isa() {
    init_runtime();
    const int isa = current_isa();
    g_last_isa = isa;
    return static_cast<CpuIsa>(isa);
}

void set_last_call_streamed(bool streamed) { g_last_streamed = streamed; }
void set_last_cpu_strategy(CpuStrategy strategy) { g_last_strategy = static_cast<int>(strategy); }

}  // namespace detail

void set_streaming_stores(StreamingStores mode) {
    detail::init_runtime();
    if (mode != StreamingStores::automatic && mode != StreamingStores::always &&
        mode != StreamingStores::never)
        throw Error("set_streaming_stores: unknown mode " + std::to_string(static_cast<int>(mode)));
    g_streaming = static_cast<int>(mode);
}

StreamingStores streaming_stores() {
    detail::init_runtime();
    return static_cast<StreamingStores>(g_streaming.load(std::memory_order_relaxed));
}

bool last_call_streamed() { return g_last_streamed; }

void set_cpu_strategy(CpuStrategy strategy) {
    detail::init_runtime();
    if (strategy != CpuStrategy::automatic && strategy != CpuStrategy::fused &&
        strategy != CpuStrategy::split)
        throw Error("set_cpu_strategy: unknown strategy " +
                    std::to_string(static_cast<int>(strategy)));
    g_strategy = static_cast<int>(strategy);
}

CpuStrategy cpu_strategy() {
    detail::init_runtime();
    return static_cast<CpuStrategy>(g_strategy.load(std::memory_order_relaxed));
}

int64_t split_max_plane(bool backward, bool residual) {
    if (backward) return detail::threshold("train_bwd", "split_max_plane");
    return detail::threshold("train_fwd", residual ? "split_max_plane_add" : "split_max_plane");
}

int64_t split_max_cache_bytes(bool backward) {
    const int64_t percent =
        detail::threshold(backward ? "train_bwd" : "train_fwd", "split_max_cache_percent");
    return last_level_cache_bytes() / 100 * percent;
}

CpuStrategy last_cpu_strategy_used() { return static_cast<CpuStrategy>(g_last_strategy); }

int64_t streaming_threshold_bytes() { return last_level_cache_bytes(); }

const char *isa_name(CpuIsa isa) {
    const int i = static_cast<int>(isa);
    return i >= 0 && i < kIsaCount ? detail::kCpuIsas[i].name : "?";
}

CpuIsa isa_from_name(const std::string &name) {
    for (int i = 0; i < kIsaCount; ++i)
        if (name == detail::kCpuIsas[i].name) return static_cast<CpuIsa>(i);
    throw Error("unknown CPU ISA '" + name + "' (expected one of " + isa_names() + ")");
}

std::vector<CpuIsa> compiled_cpu_isas() {
    std::vector<CpuIsa> v;
    for (int i = 0; i < kIsaCount; ++i) v.push_back(static_cast<CpuIsa>(i));
    return v;
}

bool cpu_supports(CpuIsa isa) {
    const int i = static_cast<int>(isa);
    return i >= 0 && i < kIsaCount && supported_isas()[i];
}

CpuIsa best_cpu_isa() { return static_cast<CpuIsa>(effective_isa(0)); }

void set_max_cpu_isa(CpuIsa cap) {
    detail::init_runtime();
    const int i = static_cast<int>(cap);
    if (i < 0 || i >= kIsaCount)
        throw Error("set_max_cpu_isa: unknown CPU ISA " + std::to_string(i) + " (expected one of " +
                    isa_names() + ")");
    g_max_isa = effective_isa(i);
}

CpuIsa max_cpu_isa() {
    detail::init_runtime();
    return static_cast<CpuIsa>(current_isa());
}

CpuIsa last_cpu_isa_used() { return static_cast<CpuIsa>(g_last_isa); }

// Halide's runtime thread pool size limit (MAX_THREADS in its thread_pool_common.h).
constexpr int kMaxThreads = 256;

void set_num_threads(int n) {
    if (n < 0)
        throw Error("set_num_threads: n must be >= 0 (0 = one per core), got " + std::to_string(n));
    // Halide's thread pool silently clamps to its limit; say so instead.
    if (n > kMaxThreads)
        throw Error("set_num_threads: at most " + std::to_string(kMaxThreads) +
                    " threads (Halide's thread pool limit), got " + std::to_string(n));
    detail::init_runtime();
    halide_set_num_threads(n);
}

int num_threads() {
    detail::init_runtime();
    // halide_set_num_threads returns the previous value and takes 0 as "one per core"; a pool
    // nothing has configured or started yet (tiny calls run on the caller's thread) reports 0,
    // which means that default: the second call returns the count the first one set.
    int n = halide_set_num_threads(0);
    if (n == 0) n = halide_set_num_threads(0);
    halide_set_num_threads(n);
    return n;
}

void set_verbose(bool on) {
    detail::init_runtime();
    g_verbose = on;
}

bool verbose() { return g_verbose.load(std::memory_order_relaxed); }

const BuildInfo &build_info() {
    static const BuildInfo info = [] {
        BuildInfo b;
        b.halide_version = detail::kHalideVersion;
        b.schedule_machine = detail::kScheduleMachine;
        b.schedule_file = detail::kScheduleFile;
        b.cpu_targets = detail::kCpuTargets;
        b.cpu_isa_best = isa_name(best_cpu_isa());
        if (detail::kCudaKernelsBuilt) b.cuda_target = detail::kCudaTarget;
        if (detail::kOpenclKernelsBuilt) b.opencl_target = detail::kOpenclTarget;
        for (const char *k : detail::kKernelNames) b.kernels.push_back(k);
        for (const char *k : detail::kCpuOnlyKernelNames)
            if (*k) b.cpu_only_kernels.push_back(k);
        for (const char *k : detail::kStreamingKernelNames)
            if (*k) b.streaming_kernels.push_back(k);
        for (const char *isa : detail::kStreamingIsaNames)
            if (*isa) b.streaming_isas.push_back(isa);
        return b;
    }();
    return info;
}

}  // namespace bn2d
