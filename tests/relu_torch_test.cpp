// The fused module against libtorch autograd on the composition it replaces:
// relu(batch_norm(x) + z), and relu(batch_norm(x)), in training (several steps) and eval mode:
// outputs, running statistics, dx, dz and the parameter gradients; exact zeros before the ReLU
// (PyTorch passes no gradient at 0) and NaN inputs (relu(NaN) = NaN, gradient passes).
#include <torch/torch.h>

#include <tuple>

#include "common.h"
#include "torch_helpers.h"

namespace bn2d::test {
namespace {

// Same NaN positions, and the other elements within atol + rtol * |want|.
::testing::AssertionResult close_with_nans(const std::vector<float> &got,
                                           const std::vector<float> &want, double atol, double rtol,
                                           const Shape &s, const std::string &what) {
    if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
    int bad = 0;
    ::testing::AssertionResult r = ::testing::AssertionFailure();
    for (size_t i = 0; i < got.size(); ++i) {
        const bool both_nan = std::isnan(got[i]) && std::isnan(want[i]);
        const bool ok = both_nan || (!std::isnan(got[i]) && !std::isnan(want[i]) &&
                                     std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]));
        if (!ok && bad++ < 5)
            r << what << " " << where(s, static_cast<int64_t>(i)) << ": got " << got[i] << ", want "
              << want[i] << "\n";
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return r << bad << " of " << got.size() << " elements differ";
}

// shape, residual, input kind: 0 random, 1 with exact zeros before the ReLU, 2 with NaN.
using Param = std::tuple<Shape, bool, int>;
class relu_torch : public ::testing::TestWithParam<Param> {};

TEST_P(relu_torch, CompositionAgrees) {
    const auto [s, residual, kind] = GetParam();
    std::mt19937 rng(
        static_cast<unsigned>(std::hash<std::string>()(name(s)) + 2 * residual + kind));
    torch::nn::BatchNorm2d theirs(torch::nn::BatchNorm2dOptions(s.c).eps(1e-5).momentum(0.1));
    Options o;
    o.activation = Activation::relu;
    BatchNorm2d ours(s.c, o);
    std::vector<float> w = random_vector(rng, s.c, 1.0f, 0.3f),
                       b = random_vector(rng, s.c, 0.0f, 0.5f);
    if (kind == 1) b[0] = residual ? 0.5f : 0.0f;  // channel 0 constant: bn(x) = bias there
    set_parameters(theirs, ours, w, b);
    auto step = [&](float mean, float stddev, bool training) {
        std::vector<float> x = random_vector(rng, s.numel(), mean, stddev);
        std::vector<float> z = random_vector(rng, s.numel());
        const int64_t plane = s.h * s.w;
        if (kind == 1) {
            // Channel 0 all 0 (mean 0, so every product with it is exact in libtorch's folded
            // x * alpha + beta as in ours) and z = -bias there: exactly 0 before the ReLU.
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < plane; ++i) {
                    x[n * s.c * plane + i] = 0.0f;
                    z[n * s.c * plane + i] = -b[0];
                }
        }
        if (kind == 2) {
            x[plane + 1] = std::numeric_limits<float>::quiet_NaN();  // channel 1
            z[s.numel() - 1] = std::numeric_limits<float>::quiet_NaN();
        }
        std::vector<float> y = poisoned(s.numel()), dy = random_vector(rng, s.numel());
        std::vector<float> dx = poisoned(s.numel()), dz = poisoned(s.numel());
        torch::Tensor tx = to_torch(x, s).requires_grad_(true);
        torch::Tensor tz = to_torch(z, s).requires_grad_(true);
        torch::Tensor pre = theirs->forward(tx);
        torch::Tensor ty = torch::relu(residual ? pre + tz : pre);
        if (residual)
            ours.forward_add(view(x, s), view(z, s), view(y, s));
        else
            ours.forward(view(x, s), view(y, s));
        EXPECT_TRUE(close_with_nans(y, from_torch(ty), 1e-5, 1e-5, s, "y"));

        theirs->weight.mutable_grad() = torch::Tensor();
        theirs->bias.mutable_grad() = torch::Tensor();
        ty.backward(to_torch(dy, s));
        ours.zero_grad();
        if (residual)
            ours.backward_add(view(dy, s), view(dx, s), view(dz, s));
        else
            ours.backward(view(dy, s), view(dx, s));
        const double gscale = 1e-5 * (1 + torch::nan_to_num(tx.grad()).abs().max().item<double>());
        EXPECT_TRUE(close_with_nans(dx, from_torch(tx.grad()), gscale, 1e-5, s, "dx"));
        if (residual) EXPECT_TRUE(close_with_nans(dz, from_torch(tz.grad()), 0, 0, s, "dz"));
        const double pscale = param_grad_atol(s);
        EXPECT_TRUE(close_with_nans(to_vector(ours.weight_grad()),
                                    from_torch(theirs->weight.grad()), pscale, 1e-5, s,
                                    "weight grad"));
        EXPECT_TRUE(close_with_nans(to_vector(ours.bias_grad()), from_torch(theirs->bias.grad()),
                                    pscale, 1e-5, s, "bias grad"));
        if (kind == 1 && training) {  // the zero channel got no gradient, in both
            EXPECT_EQ(to_vector(ours.bias_grad())[0], 0.0f);
            EXPECT_EQ(from_torch(theirs->bias.grad())[0], 0.0f);
        }
        EXPECT_TRUE(close_with_nans(to_vector(ours.running_mean()),
                                    from_torch(theirs->running_mean), 1e-6, 1e-5, s,
                                    "running_mean"));
        EXPECT_TRUE(close_with_nans(to_vector(ours.running_var()), from_torch(theirs->running_var),
                                    1e-6, 1e-5, s, "running_var"));
    };
    for (int i = 0; i < 2; ++i) {
        SCOPED_TRACE("training step " + std::to_string(i));
        step(0.3f * i, 1.0f + i, true);
    }
    theirs->eval();
    ours.eval();
    SCOPED_TRACE("eval");
    step(-0.5f, 2.0f, false);
}

std::string param_name(const ::testing::TestParamInfo<Param> &info) {
    const auto [shape, residual, kind] = info.param;
    return name(shape) + (residual ? "_add_relu" : "_relu") +
           (kind == 0   ? "_random"
            : kind == 1 ? "_exact_zeros"
                        : "_nan");
}

INSTANTIATE_TEST_SUITE_P(Grid, relu_torch,
                         ::testing::Combine(::testing::Values(Shape{4, 8, 7, 7},
                                                              Shape{2, 5, 13, 17},
                                                              Shape{8, 32, 14, 14}),
                                            ::testing::Bool(), ::testing::Values(0, 1, 2)),
                         param_name);

}  // namespace
}  // namespace bn2d::test
