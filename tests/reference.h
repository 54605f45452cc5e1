// Plain float64 reference of batchnorm2d (PyTorch semantics), independent of the Halide code.
// Shared by the tests, the demo and the benchmarks. Contiguous NCHW, double accumulation,
// textbook two-pass statistics. Inputs may be float (the data the kernels see) or double (for
// finite differences of the reference itself).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "problems.h"

namespace bn2d::reference {

using problems::Shape;

// Calls f(index) for every element of channel ic.
template<typename F>
void for_channel(const Shape &s, int64_t ic, F &&f) {
    for (int64_t in = 0; in < s.n; ++in)
        for (int64_t ih = 0; ih < s.h; ++ih)
            for (int64_t iw = 0; iw < s.w; ++iw) f(s.index(in, ic, ih, iw));
}

struct Stats {
    std::vector<double> mean, var;  // biased variance
};

template<typename T>
Stats batch_stats(const Shape &s, const std::vector<T> &x) {
    Stats st{std::vector<double>(s.c), std::vector<double>(s.c)};
    const double m = static_cast<double>(s.per_channel());
    for (int64_t c = 0; c < s.c; ++c) {
        double sum = 0, sq = 0;
        for_channel(s, c, [&](int64_t i) { sum += x[i]; });
        const double mean = sum / m;
        for_channel(s, c, [&](int64_t i) { sq += (x[i] - mean) * (x[i] - mean); });
        st.mean[c] = mean;
        st.var[c] = sq / m;
    }
    return st;
}

// The whole module state, in double.
struct Module {
    int64_t c;
    double eps = 1e-5;
    std::optional<double> momentum = 0.1;
    bool affine = true, track = true, training = true;
    std::vector<double> weight, bias, running_mean, running_var;
    int64_t num_batches_tracked = 0;

    // Saved by the last forward for backward.
    bool used_batch_stats = false;
    std::vector<double> saved_mean, saved_invstd;

    explicit Module(int64_t channels) : c(channels) {
        weight.assign(c, 1.0);
        bias.assign(c, 0.0);
        running_mean.assign(c, 0.0);
        running_var.assign(c, 1.0);
    }

    double w(int64_t ic) const { return affine ? weight[ic] : 1.0; }
    double b(int64_t ic) const { return affine ? bias[ic] : 0.0; }

    template<typename T>
    std::vector<double> forward(const Shape &s, const std::vector<T> &x) {
        const bool batch = training || !track;
        std::vector<double> y(s.numel());
        std::vector<double> mean(c), invstd(c);
        if (batch) {
            double factor = 0.0;
            if (training && track) {
                ++num_batches_tracked;
                factor = momentum ? *momentum : 1.0 / static_cast<double>(num_batches_tracked);
            }
            if (s.numel() == 0) return y;  // PyTorch: empty output, stats untouched
            Stats st = batch_stats(s, x);
            const double m = static_cast<double>(s.per_channel());
            for (int64_t ic = 0; ic < c; ++ic) {
                mean[ic] = st.mean[ic];
                invstd[ic] = 1.0 / std::sqrt(st.var[ic] + eps);
                if (training && track) {
                    running_mean[ic] = factor * st.mean[ic] + (1 - factor) * running_mean[ic];
                    running_var[ic] =
                        factor * st.var[ic] * m / (m - 1) + (1 - factor) * running_var[ic];
                }
            }
        } else {
            for (int64_t ic = 0; ic < c; ++ic) {
                mean[ic] = running_mean[ic];
                invstd[ic] = 1.0 / std::sqrt(running_var[ic] + eps);
            }
        }
        for (int64_t ic = 0; ic < c; ++ic)
            for_channel(s, ic,
                        [&](int64_t i) { y[i] = (x[i] - mean[ic]) * invstd[ic] * w(ic) + b(ic); });
        used_batch_stats = batch;
        saved_mean = mean;
        saved_invstd = invstd;
        return y;
    }

    struct Grads {
        std::vector<double> input, weight, bias;
    };

    // Gradients of the last forward, from the textbook formulas.
    template<typename T, typename U>
    Grads backward(const Shape &s, const std::vector<T> &x, const std::vector<U> &dy) const {
        Grads g{std::vector<double>(s.numel()), std::vector<double>(c), std::vector<double>(c)};
        const double m = static_cast<double>(s.per_channel());
        for (int64_t ic = 0; ic < c; ++ic) {
            double sum_dy = 0, sum_dy_xhat = 0;
            for_channel(s, ic, [&](int64_t i) {
                const double xhat = (x[i] - saved_mean[ic]) * saved_invstd[ic];
                sum_dy += dy[i];
                sum_dy_xhat += dy[i] * xhat;
            });
            g.bias[ic] = sum_dy;
            g.weight[ic] = sum_dy_xhat;
            for_channel(s, ic, [&](int64_t i) {
                const double xhat = (x[i] - saved_mean[ic]) * saved_invstd[ic];
                g.input[i] = used_batch_stats ? saved_invstd[ic] * w(ic) *
                                                    (dy[i] - sum_dy / m - xhat * sum_dy_xhat / m)
                                              : dy[i] * w(ic) * saved_invstd[ic];
            });
        }
        return g;
    }
};

}  // namespace bn2d::reference
