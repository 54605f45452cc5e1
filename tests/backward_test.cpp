// Backward against the float64 reference over the shape x option grid, in training and eval
// mode, for every output mask; gradient accumulation; and a finite-difference proof of the
// reference itself.
#include <algorithm>
#include <tuple>

#include "common.h"

namespace bn2d::test {
namespace {

// shape, affine, track_running_stats, training. Untracked modules use batch statistics in eval
// mode too, so their eval backward is the full batch-statistics gradient. Momentum does not
// enter backward.
using Param = std::tuple<Shape, bool, bool, bool>;

class BackwardGrid : public ::testing::TestWithParam<Param> {};

TEST_P(BackwardGrid, EveryMaskMatchesReference) {
    const auto [shape, affine, track, training] = GetParam();
    std::mt19937 rng(std::hash<std::string>()(name(shape)) + affine + 2 * training + 4 * track);
    BatchNorm2d bn(shape.c, 1e-5, 0.1, affine, track);
    reference::Module ref = reference_like(bn);
    randomize_parameters(rng, bn, ref);
    // A training step first, so eval uses non-trivial running statistics.
    std::vector<float> x0 = random_vector(rng, shape.numel(), 0.5f, 2.0f), y(shape.numel());
    bn.forward(view(x0, shape), view(y, shape));
    ref.forward(shape, x0);
    bn.train(training);
    ref.training = training;

    std::vector<float> x = random_vector(rng, shape.numel(), -0.3f, 1.5f);
    bn.forward(view(x, shape), view(y, shape));
    ref.forward(shape, x);
    std::vector<float> dy = random_vector(rng, shape.numel());
    reference::Module::Grads want = ref.backward(shape, x, dy);
    const double atol_in = input_grad_atol(want.input), atol_p = param_grad_atol(shape);

    for (BackwardMask mask : all_masks()) {
        SCOPED_TRACE(mask_name(mask));
        bn.zero_grad();
        std::vector<float> dx = poisoned(shape.numel());
        bn.backward(view(dy, shape), mask.input ? view(dx, shape) : Tensor(), mask);
        if (mask.input) {
            EXPECT_TRUE(all_close(dx, want.input, atol_in, 1e-5,
                                  [&](int64_t i) { return where(shape, i); }));
        } else {
            EXPECT_TRUE(std::all_of(dx.begin(), dx.end(), [](float v) { return std::isnan(v); }))
                << "grad_input written although not requested";
        }
        if (!affine) {
            EXPECT_FALSE(bn.weight_grad().defined());
            EXPECT_FALSE(bn.bias_grad().defined());
            continue;
        }
        std::vector<float> zeros(shape.c, 0.0f);
        if (mask.params) {
            EXPECT_TRUE(all_close(to_vector(bn.weight_grad()), want.weight, atol_p, 1e-5));
            EXPECT_TRUE(all_close(to_vector(bn.bias_grad()), want.bias, atol_p, 1e-5));
        } else {
            EXPECT_EQ(to_vector(bn.weight_grad()), zeros);
            EXPECT_EQ(to_vector(bn.bias_grad()), zeros);
        }
    }
}

std::string param_name(const ::testing::TestParamInfo<Param> &info) {
    const auto [shape, affine, track, training] = info.param;
    return name(shape) + (affine ? "_affine" : "_plain") + (track ? "_track" : "_notrack") +
           (training ? "_train" : "_eval");
}

INSTANTIATE_TEST_SUITE_P(Grid, BackwardGrid,
                         ::testing::Combine(::testing::ValuesIn(grid_shapes()), ::testing::Bool(),
                                            ::testing::Bool(), ::testing::Bool()),
                         param_name);

TEST(Backward, ParameterGradientsAccumulateUntilZeroed) {
    const Shape s{4, 3, 6, 5};
    std::mt19937 rng(21);
    BatchNorm2d bn(s.c);
    std::vector<float> x = random_vector(rng, s.numel()), y(s.numel()), dx(s.numel());
    std::vector<float> dy1 = random_vector(rng, s.numel()), dy2 = random_vector(rng, s.numel());
    bn.forward(view(x, s), view(y, s));
    bn.backward(view(dy1, s), view(dx, s));
    const std::vector<float> g1 = to_vector(bn.weight_grad()), b1 = to_vector(bn.bias_grad());
    bn.zero_grad();
    bn.backward(view(dy2, s), view(dx, s));
    const std::vector<float> g2 = to_vector(bn.weight_grad()), b2 = to_vector(bn.bias_grad());
    bn.zero_grad();
    bn.backward(view(dy1, s), view(dx, s));
    bn.backward(view(dy2, s), view(dx, s));
    std::vector<float> g12 = to_vector(bn.weight_grad()), b12 = to_vector(bn.bias_grad());
    for (int64_t c = 0; c < s.c; ++c) {
        EXPECT_FLOAT_EQ(g12[c], g1[c] + g2[c]) << "channel " << c;
        EXPECT_FLOAT_EQ(b12[c], b1[c] + b2[c]) << "channel " << c;
    }
    bn.zero_grad();
    EXPECT_EQ(to_vector(bn.weight_grad()), std::vector<float>(s.c, 0.0f));
}

TEST(Backward, AllocatingOverloadMatches) {
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(22);
    std::vector<float> x = random_vector(rng, s.numel()), y(s.numel());
    std::vector<float> dy = random_vector(rng, s.numel()), dx = poisoned(s.numel());
    BatchNorm2d a(s.c), b(s.c);
    a.forward(view(x, s), view(y, s));
    b.forward(view(x, s), view(y, s));
    a.backward(view(dy, s), view(dx, s));
    EXPECT_EQ(b.backward(view(dy, s)), dx);
}

// The reference's gradients are those of its forward: central differences in float64 of the
// scalar loss L = sum(y * r), through reference::Module::forward itself (on double inputs),
// with respect to x, weight and bias, in training (batch statistics) and eval mode.
// With h = 1e-5 the truncation error of central differences is O(h^2) ~ 1e-10 and the rounding
// error ~ 1e-16 * |L| / h ~ 1e-11, so 1e-7 is a tight bound that still fails on any formula
// mistake (a missing term changes a gradient by O(0.1-1)).
TEST(Backward, ReferenceGradientsMatchFiniteDifferences) {
    const Shape s{2, 3, 2, 3};
    std::mt19937 rng(23);
    for (bool training : {true, false}) {
        SCOPED_TRACE(training ? "training" : "eval");
        std::vector<float> xf = random_vector(rng, s.numel(), 0.5f, 1.5f);
        std::vector<double> r(s.numel());
        for (double &v : r) v = std::normal_distribution<double>(0.0, 1.0)(rng);
        reference::Module base(s.c);
        for (int64_t c = 0; c < s.c; ++c) {
            base.weight[c] = 0.5 + 0.3 * c;
            base.bias[c] = -0.2 * c;
            base.running_mean[c] = 0.1 * c;
            base.running_var[c] = 1.0 + 0.5 * c;
        }
        base.training = training;
        std::vector<double> x(xf.begin(), xf.end()), w = base.weight, b = base.bias;
        auto loss = [&] {
            reference::Module m = base;  // fresh state each time: running stats fixed
            m.weight = w;
            m.bias = b;
            const std::vector<double> y = m.forward(s, x);
            double L = 0;
            for (size_t i = 0; i < y.size(); ++i) L += r[i] * y[i];
            return L;
        };
        reference::Module m = base;
        m.forward(s, x);
        const reference::Module::Grads g = m.backward(s, x, r);  // dL/dy = r
        EXPECT_EQ(m.used_batch_stats, training);
        const double h = 1e-5;
        auto central = [&](std::vector<double> &v, size_t i) {
            const double keep = v[i];
            v[i] = keep + h;
            const double up = loss();
            v[i] = keep - h;
            const double down = loss();
            v[i] = keep;
            return (up - down) / (2 * h);
        };
        for (size_t i = 0; i < x.size(); ++i)
            EXPECT_NEAR(g.input[i], central(x, i), 1e-7) << where(s, int64_t(i));
        for (int64_t c = 0; c < s.c; ++c) {
            EXPECT_NEAR(g.weight[c], central(w, c), 1e-7) << "weight " << c;
            EXPECT_NEAR(g.bias[c], central(b, c), 1e-7) << "bias " << c;
        }
        // Not vacuous: in training the input gradient is far from the eval-mode shortcut
        // dy * w * invstd (the batch statistics depend on x); in eval it is exactly that.
        double shortcut_gap = 0;
        for (int64_t c = 0; c < s.c; ++c)
            reference::for_channel(s, c, [&](int64_t i) {
                const double shortcut = r[i] * base.weight[c] * m.saved_invstd[c];
                shortcut_gap = std::max(shortcut_gap, std::abs(g.input[i] - shortcut));
            });
        if (training)
            EXPECT_GT(shortcut_gap, 1e-2);
        else
            EXPECT_LT(shortcut_gap, 1e-12);
    }
}

// Backward with an empty batch: no gradient to compute, parameter gradients += 0.
TEST(Backward, EmptyBatchIsANoOp) {
    BatchNorm2d bn(3);
    std::mt19937 rng(24);
    const Shape s{2, 3, 4, 5};
    std::vector<float> x = random_vector(rng, s.numel()), y(s.numel());
    std::vector<float> dy = random_vector(rng, s.numel()), dx(s.numel());
    bn.forward(view(x, s), view(y, s));
    bn.backward(view(dy, s), view(dx, s));
    const std::vector<float> gw = to_vector(bn.weight_grad()), gb = to_vector(bn.bias_grad());
    const Tensor empty(nullptr, {0, 3, 4, 5});
    bn.forward(empty, empty);
    bn.backward(empty, empty);
    bn.backward(empty, Tensor(), {false, true});
    EXPECT_EQ(to_vector(bn.weight_grad()), gw);
    EXPECT_EQ(to_vector(bn.bias_grad()), gb);
}

// A mask that asks for nothing computes nothing: no write to grad_input, gradients unchanged.
TEST(Backward, EmptyMaskWritesNothing) {
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(25);
    BatchNorm2d bn(s.c);
    std::vector<float> x = random_vector(rng, s.numel()), y(s.numel());
    std::vector<float> dy = random_vector(rng, s.numel()), dx = poisoned(s.numel());
    bn.forward(view(x, s), view(y, s));
    bn.backward(view(dy, s), view(dx, s), {false, false});
    EXPECT_TRUE(std::all_of(dx.begin(), dx.end(), [](float v) { return std::isnan(v); }));
    EXPECT_EQ(to_vector(bn.weight_grad()), std::vector<float>(s.c, 0.0f));
}

}  // namespace
}  // namespace bn2d::test
