// Uses the installed bn2d package: one training step and one eval step on a small batch, with
// a self-check that the training output of each channel has mean ~0 and variance ~1.
#include <bn2d/bn2d.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
    const int64_t N = 4, C = 3, H = 5, W = 7;
    std::vector<float> x(N * C * H * W), y(x.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i) * 3.0f + 1.5f;
    bn2d::BatchNorm2d bn(C);
    bn.forward(bn2d::Tensor::nchw(x.data(), N, C, H, W), bn2d::Tensor::nchw(y.data(), N, C, H, W));
    for (int64_t c = 0; c < C; ++c) {
        double s = 0, sq = 0;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < H * W; ++i) {
                double v = y[(n * C + c) * H * W + i];
                s += v;
                sq += v * v;
            }
        const double m = N * H * W, mean = s / m, var = sq / m - mean * mean;
        if (std::abs(mean) > 1e-4 || std::abs(var - 1) > 1e-3) {
            std::printf("channel %lld: mean %g var %g\n", (long long)c, mean, var);
            return 1;
        }
    }
    bn.eval();
    bn.forward(bn2d::Tensor::nchw(x.data(), N, C, H, W), bn2d::Tensor::nchw(y.data(), N, C, H, W));
    const bn2d::BuildInfo &info = bn2d::build_info();
    std::printf("app_install: Halide %s, schedule %s, %zu kernels\n", info.halide_version.c_str(),
                info.schedule_machine.c_str(), info.kernels.size());
    std::printf("app_install: %s ok, num_batches_tracked %lld\n", bn.to_string().c_str(),
                (long long)bn.num_batches_tracked());
    return 0;
}
