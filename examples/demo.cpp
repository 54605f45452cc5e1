// The main job: a BatchNorm2d(100) on the seed's 20x100x35x45 input. Runs training steps and
// eval, checks every output and buffer against the float64 reference, runs a backward, and
// prints the time per step for every compiled CPU ISA variant this machine can run.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "bn2d/bn2d.h"
#include "reference.h"

namespace {

constexpr int64_t kN = 20, kC = 100, kH = 35, kW = 45;

std::vector<float> random_input(std::mt19937 &rng, int64_t n, float mean, float stddev) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(n);
    for (float &x : v) x = d(rng);
    return v;
}

// Largest |a - b| / (1 + |b|) over all elements.
template<typename A, typename B>
double max_error(const A &a, const B &b) {
    double e = 0;
    for (size_t i = 0; i < a.size(); ++i)
        e = std::max(e, std::abs(double(a[i]) - double(b[i])) / (1.0 + std::abs(double(b[i]))));
    return e;
}

double median_ms(std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int main() {
    try {
        const bn2d::reference::Shape shape{kN, kC, kH, kW};
        std::mt19937 rng(2026);
        bn2d::BatchNorm2d bn(kC);
        bn2d::reference::Module ref(kC);
        // Non-trivial affine parameters, the same in both.
        std::vector<float> w = random_input(rng, kC, 1.0f, 0.2f),
                           b = random_input(rng, kC, 0.0f, 0.5f);
        bn.load_state_dict({{w.begin(), w.end()},
                            {b.begin(), b.end()},
                            std::vector<double>(kC, 0.0),
                            std::vector<double>(kC, 1.0),
                            0});
        ref.weight.assign(w.begin(), w.end());
        ref.bias.assign(b.begin(), b.end());

        std::printf("%s on input [%lld, %lld, %lld, %lld]\n", bn.to_string().c_str(), (long long)kN,
                    (long long)kC, (long long)kH, (long long)kW);
        std::vector<float> y(shape.numel());
        std::vector<float> x;
        double worst = 0;
        for (int step = 1; step <= 3; ++step) {
            x = random_input(rng, shape.numel(), 0.5f * step, 2.0f);
            bn.forward(bn2d::Tensor::nchw(x.data(), kN, kC, kH, kW),
                       bn2d::Tensor::nchw(y.data(), kN, kC, kH, kW));
            auto y_ref = ref.forward(shape, x);
            auto st = bn.state_dict();
            double e = std::max({max_error(y, y_ref), max_error(st.running_mean, ref.running_mean),
                                 max_error(st.running_var, ref.running_var)});
            worst = std::max(worst, e);
            std::printf("train step %d: max rel error vs float64 %.2e, num_batches_tracked %lld\n",
                        step, e, (long long)bn.num_batches_tracked());
        }
        // Backward of the last training step.
        std::vector<float> dy = random_input(rng, shape.numel(), 0.0f, 1.0f), dx(shape.numel());
        bn.backward(bn2d::Tensor::nchw(dy.data(), kN, kC, kH, kW),
                    bn2d::Tensor::nchw(dx.data(), kN, kC, kH, kW));
        auto g = ref.backward(shape, x, dy);
        auto st = bn.state_dict();
        std::vector<float> gw(kC), gb(kC);
        std::copy(bn.weight_grad().data(), bn.weight_grad().data() + kC, gw.begin());
        std::copy(bn.bias_grad().data(), bn.bias_grad().data() + kC, gb.begin());
        double eb =
            std::max({max_error(dx, g.input), max_error(gw, g.weight), max_error(gb, g.bias)});
        worst = std::max(worst, eb);
        std::printf("backward:     max rel error vs float64 %.2e\n", eb);

        bn.eval();
        ref.training = false;
        bn.forward(bn2d::Tensor::nchw(x.data(), kN, kC, kH, kW),
                   bn2d::Tensor::nchw(y.data(), kN, kC, kH, kW));
        double ee = max_error(y, ref.forward(shape, x));
        worst = std::max(worst, ee);
        std::printf("eval:         max rel error vs float64 %.2e\n", ee);
        const double tolerance = 1e-4;
        const bool ok = worst < tolerance;
        std::printf("check: %s (worst %.2e, tolerance %.0e)\n\n", ok ? "PASS" : "FAIL", worst,
                    tolerance);

        // Timings per ISA variant: median of 20 runs each, all threads.
        std::printf("%-9s %14s %14s %14s\n", "ISA", "train fwd ms", "eval fwd ms", "backward ms");
        bn2d::Tensor tx = bn2d::Tensor::nchw(x.data(), kN, kC, kH, kW),
                     ty = bn2d::Tensor::nchw(y.data(), kN, kC, kH, kW);
        bn2d::Tensor tdy = bn2d::Tensor::nchw(dy.data(), kN, kC, kH, kW),
                     tdx = bn2d::Tensor::nchw(dx.data(), kN, kC, kH, kW);
        const bn2d::CpuIsa saved_cap = bn2d::max_cpu_isa();
        for (bn2d::CpuIsa isa : bn2d::compiled_cpu_isas()) {
            if (!bn2d::cpu_supports(isa)) {
                std::printf("%-9s %14s\n", bn2d::isa_name(isa), "(not supported by this CPU)");
                continue;
            }
            bn2d::set_max_cpu_isa(isa);
            auto time = [&](auto &&fn) {
                std::vector<double> t;
                for (int i = 0; i < 21; ++i) {
                    auto t0 = std::chrono::steady_clock::now();
                    fn();
                    t.push_back(std::chrono::duration<double, std::milli>(
                                    std::chrono::steady_clock::now() - t0)
                                    .count());
                }
                return median_ms(t);
            };
            bn.train();
            double tt = time([&] { bn.forward(tx, ty); });
            bn2d::CpuIsa used = bn2d::last_cpu_isa_used();
            double tb = time([&] { bn.backward(tdy, tdx); });
            bn.eval();
            double te = time([&] { bn.forward(tx, ty); });
            std::printf("%-9s %14.3f %14.3f %14.3f%s\n", bn2d::isa_name(isa), tt, te, tb,
                        used == isa ? "" : "  (dispatch picked another variant!)");
        }
        bn2d::set_max_cpu_isa(saved_cap);
        std::printf("\nthreads: %d; timings are medians of 21 runs on this machine\n",
                    bn2d::num_threads());
        return ok ? 0 : 1;
    } catch (const bn2d::Error &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
}
