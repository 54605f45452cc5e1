// Global run-time settings: Halide error capture, CPU ISA cap, threads, device interfaces.
#include <atomic>
#include <cstdlib>
#include <mutex>

#include "HalideRuntimeCuda.h"
#include "HalideRuntimeOpenCL.h"
#include "internal.h"

namespace bn2d {
namespace {

// Halide's default handler aborts the process. Ours keeps the message for the calling thread;
// check_halide() turns it into an exception when the kernel returns its error code.
// A kernel error raised inside a parallel task is reported on a worker thread, so the last
// message is also kept process-wide as a fallback for the calling thread.
thread_local std::string g_last_halide_error;
std::mutex g_any_error_mutex;
std::string g_any_halide_error;

void capture_error(void *, const char *msg) {
    std::string m = msg ? msg : "";
    while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
    g_last_halide_error = m;
    std::lock_guard<std::mutex> lock(g_any_error_mutex);
    g_any_halide_error = m;
}

// ---- CPU ISA cap (process-wide; read on every kernel call, possibly from several threads) ----
std::atomic<CpuIsa> g_max_isa{CpuIsa::AVX512};
thread_local CpuIsa g_last_isa = CpuIsa::Baseline;

// Lower enum value = better ISA.
bool at_most(CpuIsa isa, CpuIsa cap) { return static_cast<int>(isa) >= static_cast<int>(cap); }

// One 64-bit word per 64 features, as the wrapper passes them.
constexpr int kFeatureWords = (halide_target_feature_end + 63) / 64;

uint64_t feature_bit(halide_target_feature_t f, int word) {
    return f / 64 == word ? (uint64_t(1) << (f % 64)) : 0;
}

bool cpu_has(std::initializer_list<halide_target_feature_t> fs) {
    uint64_t words[kFeatureWords] = {};
    for (auto f : fs)
        for (int w = 0; w < kFeatureWords; ++w) words[w] |= feature_bit(f, w);
    return halide_default_can_use_target_features(kFeatureWords, words) != 0;
}

}  // namespace

namespace detail {

void init_runtime() {
    static std::once_flag once;
    std::call_once(once, [] {
        halide_set_error_handler(capture_error);
        if (const char *env = std::getenv("BN2D_MAX_CPU_ISA")) {
            try {
                CpuIsa isa = isa_from_name(env);
                if (cpu_supports(isa)) g_max_isa = isa;
            } catch (const Error &) {
                // An unknown name in the environment must not make every call fail; ignore it.
            }
        }
    });
}

void check_halide(int rc, const char *what) {
    if (rc == 0) return;
    std::string msg = g_last_halide_error;
    g_last_halide_error.clear();
    if (msg.empty()) {
        std::lock_guard<std::mutex> lock(g_any_error_mutex);
        msg = g_any_halide_error;
    }
    if (msg.empty()) msg = "Halide error code " + std::to_string(rc);
    throw Error(std::string(what) + ": " + msg);
}

CpuIsa select_cpu_isa() {
    init_runtime();
    // Feature checks are cached: cpu_supports() is evaluated once per ISA.
    static const std::vector<CpuIsa> supported = [] {
        std::vector<CpuIsa> v;
        for (CpuIsa isa : compiled_cpu_isas())
            if (cpu_supports(isa)) v.push_back(isa);
        return v;
    }();
    for (CpuIsa isa : supported) {
        if (at_most(isa, g_max_isa)) {
            g_last_isa = isa;
            return isa;
        }
    }
    g_last_isa = CpuIsa::Baseline;
    return CpuIsa::Baseline;
}

const halide_device_interface_t *device_interface(Device d) {
    switch (d) {
    case Device::CPU: return nullptr;
#if BN2D_HAVE_GPU
    case Device::Cuda: return halide_cuda_device_interface();
    case Device::OpenCL: return halide_opencl_device_interface();
#else
    default: throw Error(std::string(device_name(d)) + ": built without GPU support (BN2D_GPU=OFF)");
#endif
    }
    return nullptr;
}

}  // namespace detail

const char *isa_name(CpuIsa isa) {
    switch (isa) {
    case CpuIsa::AVX512: return "avx512";
    case CpuIsa::AVX2: return "avx2";
    case CpuIsa::SSE41: return "sse41";
    case CpuIsa::Baseline: return "baseline";
    }
    return "?";
}

CpuIsa isa_from_name(const std::string &name) {
    for (CpuIsa isa : compiled_cpu_isas())
        if (name == isa_name(isa)) return isa;
    throw Error("unknown CPU ISA '" + name + "' (expected avx512, avx2, sse41 or baseline)");
}

std::vector<CpuIsa> compiled_cpu_isas() {
    return {CpuIsa::AVX512, CpuIsa::AVX2, CpuIsa::SSE41, CpuIsa::Baseline};
}

bool cpu_supports(CpuIsa isa) {
    switch (isa) {
    case CpuIsa::AVX512:
        return cpu_has({halide_target_feature_avx512, halide_target_feature_avx512_skylake,
                        halide_target_feature_avx2, halide_target_feature_fma,
                        halide_target_feature_f16c, halide_target_feature_sse41});
    case CpuIsa::AVX2:
        return cpu_has({halide_target_feature_avx2, halide_target_feature_fma,
                        halide_target_feature_f16c, halide_target_feature_sse41});
    case CpuIsa::SSE41: return cpu_has({halide_target_feature_sse41});
    case CpuIsa::Baseline: return true;
    }
    return false;
}

void set_max_cpu_isa(CpuIsa isa) {
    detail::init_runtime();
    if (!cpu_supports(isa))
        throw Error(std::string("set_max_cpu_isa: this CPU cannot run the ") + isa_name(isa) +
                    " variant");
    g_max_isa = isa;
}

CpuIsa max_cpu_isa() {
    detail::init_runtime();
    return g_max_isa;
}

CpuIsa last_cpu_isa_used() { return g_last_isa; }

void set_num_threads(int n) {
    if (n < 0) throw Error("set_num_threads: n must be >= 0 (0 = one per core), got " +
                           std::to_string(n));
    detail::init_runtime();
    halide_set_num_threads(n);
}

int num_threads() {
    detail::init_runtime();
    // halide_set_num_threads returns the previous value; set it back unchanged.
    int n = halide_set_num_threads(0);
    halide_set_num_threads(n);
    return n;
}

}  // namespace bn2d
