// Clocks and the statistics a score is made of.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <vector>

namespace bn2d::tune {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline double geomean(const std::vector<double> &v) {
    double s = 0;
    for (double x : v) s += std::log(x);
    return std::exp(s / double(v.size()));
}

// Seconds of one call of `fn`, timed over enough calls to last ~2 ms.
inline double time_call(const std::function<void()> &fn, int iters) {
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) fn();
    return seconds_since(t0) / iters;
}

}  // namespace bn2d::tune
