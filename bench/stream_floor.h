// The streaming bound and the floor: an op's bytes moved by one multiply-add per element on a
// pool of threads, with ordinary stores (bound) or non-temporal stores (floor). Shared by the
// CPU benchmark (bench/bench_bn2d.cpp) and the tuner (tools/tune/measure.cpp), so both measure
// against the same floor.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace bn2d::bench {

// The op's bytes moved by one multiply-add per element, on a pool of threads:
// forward reads x and writes y (y = a*x + b); backward reads x and dy and writes dx
// (dx = a*x + b*dy). Plain stores, like every implementation here. The loops are compiled for
// the best of x86-64-v4 / v3 / baseline this CPU runs (ifunc), only they.
inline __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void
stream_fwd(const float *__restrict x, float *__restrict y, int64_t n, float a, float b) {
    for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + b;
}

inline __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void
stream_bwd(const float *__restrict x, const float *__restrict dy, float *__restrict dx, int64_t n,
           float a, float b) {
    for (int64_t i = 0; i < n; ++i) dx[i] = a * x[i] + b * dy[i];
}

// The same with non-temporal stores (no read for ownership): the floor. AVX-512 or AVX
// streaming stores of whole aligned vectors (chunks are 64-byte aligned), a scalar tail.
inline __attribute__((target("avx512f"))) void nt_fwd_avx512(const float *x, float *y, int64_t n,
                                                             float a, float b) {
    int64_t i = 0;
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (; i + 16 <= n; i += 16)
        _mm512_stream_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), vb));
    for (; i < n; ++i) y[i] = a * x[i] + b;
}
inline __attribute__((target("avx512f"))) void
nt_bwd_avx512(const float *x, const float *dy, float *dx, int64_t n, float a, float b) {
    int64_t i = 0;
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (; i + 16 <= n; i += 16)
        _mm512_stream_ps(dx + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i),
                                                 _mm512_mul_ps(vb, _mm512_loadu_ps(dy + i))));
    for (; i < n; ++i) dx[i] = a * x[i] + b * dy[i];
}
inline __attribute__((target("avx2,fma"))) void nt_fwd_avx2(const float *x, float *y, int64_t n,
                                                            float a, float b) {
    int64_t i = 0;
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (; i + 8 <= n; i += 8)
        _mm256_stream_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), vb));
    for (; i < n; ++i) y[i] = a * x[i] + b;
}
inline __attribute__((target("avx2,fma"))) void
nt_bwd_avx2(const float *x, const float *dy, float *dx, int64_t n, float a, float b) {
    int64_t i = 0;
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (; i + 8 <= n; i += 8)
        _mm256_stream_ps(dx + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                 _mm256_mul_ps(vb, _mm256_loadu_ps(dy + i))));
    for (; i < n; ++i) dx[i] = a * x[i] + b * dy[i];
}
inline void nt_fwd(const float *x, float *y, int64_t n, float a, float b) {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    avx512 ? nt_fwd_avx512(x, y, n, a, b) : nt_fwd_avx2(x, y, n, a, b);
    _mm_sfence();
}
inline void nt_bwd(const float *x, const float *dy, float *dx, int64_t n, float a, float b) {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    avx512 ? nt_bwd_avx512(x, dy, dx, n, a, b) : nt_bwd_avx2(x, dy, dx, n, a, b);
    _mm_sfence();
}

// How the loop writes its output: ordinary stores (the bound), streaming stores (the floor),
// or ordinary stores into a per-thread scratch of kScratchBytes that is then copied out with
// streaming stores. The last is what a runtime can do around a compiler that emits no
// streaming stores (Halide 21): run the kernel on cache-sized chunks into scratch, stream the
// chunk out. It stays in the benchmark as the evidence against that design: on the 2-core
// EPYC VM it runs at the bound, not the floor (a core alternates a read-only and a write-only
// phase and cannot keep enough misses in flight through either); only a scratch of a few KiB,
// far too small to amortize a kernel call, reaches the floor.
enum class Stores { ordinary, streaming, via_scratch };
constexpr int64_t kScratchBytes = 256 << 10;  // half a core's L2 (1 MiB) here

inline void via_scratch(const float *x, const float *dy, float *out, int64_t n, float a, float b) {
    constexpr int64_t kFloats = kScratchBytes / 4;
    thread_local std::vector<float> scratch(kFloats);
    for (int64_t i = 0; i < n; i += kFloats) {
        const int64_t m = std::min(kFloats, n - i);
        if (dy)
            stream_bwd(x + i, dy + i, scratch.data(), m, a, b);
        else
            stream_fwd(x + i, scratch.data(), m, a, b);
        nt_fwd(scratch.data(), out + i, m, 1.0f, 0.0f);  // a streaming copy: 1 * s + 0 is exact
    }
}

// A persistent pool of n threads (the caller and g_threads-1 workers; OpenMP-free) that
// runs one streaming job at a time. The job is cut into chunks of whole cache lines, claimed
// dynamically like the tasks of Halide's thread pool, so that a core the host takes away for a
// while (this machine is a VM) slows the bound as it slows ours, instead of leaving the caller
// waiting on a fixed half. Workers spin briefly for the next job (a benchmark loop calls back to
// back), then sleep, so an idle pool takes no core from the other implementations.
class StreamPool {
public:
    explicit StreamPool(int n) {
        for (int i = 1; i < std::max(1, n); ++i) workers_.emplace_back([this] { work(); });
    }
    ~StreamPool() {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_ = true;
            wake_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        for (auto &t : workers_) t.join();
    }
    // out = a*x + b (dy null) or out = a*x + b*dy, over n floats; returns when all is written.
    void run(const float *x, const float *dy, float *out, int64_t n, float a, float b,
             Stores stores) {
        stores_ = stores;
        x_ = x;
        dy_ = dy;
        out_ = out;
        n_ = n;
        a_ = a;
        b_ = b;
        const int64_t threads = static_cast<int64_t>(workers_.size()) + 1;
        chunk_ = std::clamp<int64_t>((n / (threads * 8) + 15) / 16 * 16, 16384, 262144);
        nchunks_ = static_cast<uint32_t>((n + chunk_ - 1) / chunk_);
        if (nchunks_ >= (1u << 20)) throw std::runtime_error("stream bound: tensor too large");
        done_.store(0, std::memory_order_relaxed);
        // Publish the job: generation | chunk count | next chunk (0), one word.
        gen_ = (gen_ + 1) & 0xffffffu;
        claim_.store(gen_ << 40 | uint64_t(nchunks_) << 20, std::memory_order_release);
        if (!workers_.empty()) {
            {
                std::lock_guard<std::mutex> lk(m_);
                wake_.fetch_add(1, std::memory_order_release);
            }
            cv_.notify_all();
        }
        drain(gen_);
        while (done_.load(std::memory_order_acquire) != nchunks_) _mm_pause();
    }

private:
    // Claims and runs chunks of generation gen until none is left. The claim word holds the
    // generation (24 bits), the job's chunk count (20) and the next chunk (20), so a claim is
    // checked against its own job only.
    void drain(uint64_t gen) {
        for (;;) {
            uint64_t v = claim_.load(std::memory_order_acquire);
            uint32_t c;
            do {
                c = static_cast<uint32_t>(v & 0xfffff);
                if ((v >> 40) != gen || c >= ((v >> 20) & 0xfffff)) return;
            } while (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel));
            // Claimed chunk c of job gen: that job cannot finish, nor the next start, before
            // done_ counts it, so the job's fields are stable here.
            const int64_t lo = c * chunk_, hi = std::min(n_, lo + chunk_);
            const float *dy = dy_ ? dy_ + lo : nullptr;
            switch (stores_) {
            case Stores::ordinary:
                dy ? stream_bwd(x_ + lo, dy, out_ + lo, hi - lo, a_, b_)
                   : stream_fwd(x_ + lo, out_ + lo, hi - lo, a_, b_);
                break;
            case Stores::streaming:
                dy ? nt_bwd(x_ + lo, dy, out_ + lo, hi - lo, a_, b_)
                   : nt_fwd(x_ + lo, out_ + lo, hi - lo, a_, b_);
                break;
            case Stores::via_scratch: via_scratch(x_ + lo, dy, out_ + lo, hi - lo, a_, b_); break;
            }
            done_.fetch_add(1, std::memory_order_release);
        }
    }

    void work() {
        uint64_t seen = 0;
        for (;;) {
            uint64_t w;
            auto spin_start = std::chrono::steady_clock::now();
            for (unsigned spins = 0; (w = wake_.load(std::memory_order_acquire)) == seen; ++spins) {
                _mm_pause();
                if ((spins & 255) == 255 && std::chrono::steady_clock::now() - spin_start >
                                                std::chrono::microseconds(500)) {
                    std::unique_lock<std::mutex> lk(m_);
                    cv_.wait(lk, [&] { return wake_.load(std::memory_order_acquire) != seen; });
                    spin_start = std::chrono::steady_clock::now();
                }
            }
            seen = w;
            {
                std::lock_guard<std::mutex> lk(m_);
                if (stop_) return;
            }
            drain(claim_.load(std::memory_order_acquire) >> 40);
        }
    }

    std::vector<std::thread> workers_;
    std::mutex m_;
    std::condition_variable cv_;
    std::atomic<uint64_t> wake_{0};   // bumped once per job (and to stop)
    std::atomic<uint64_t> claim_{0};  // generation << 40 | chunk count << 20 | next chunk
    std::atomic<uint32_t> done_{0};   // chunks finished in the current job
    bool stop_ = false;               // under m_
    uint64_t gen_ = 0;                // caller only
    // The current job; written by the caller only while no chunk of any job is in flight.
    const float *x_ = nullptr, *dy_ = nullptr;
    float *out_ = nullptr;
    int64_t n_ = 0, chunk_ = 1;
    uint32_t nchunks_ = 0;  // caller only (workers read the count from claim_)
    float a_ = 0, b_ = 0;
    Stores stores_ = Stores::ordinary;
};

}  // namespace bn2d::bench
