// Forward (training and eval) against the float64 reference over the shape x option grid, plus
// numerical robustness, exact-bias, empty batches, strided views and the state API.
#include <algorithm>
#include <cstring>
#include <tuple>

#include "common.h"

namespace bn2d::test {
namespace {

// Tolerances. Outputs are float32 computed from statistics accumulated in float64: each output
// is a handful of float32 operations on values of magnitude ~1-10, so its error is a few ulps of
// that magnitude (~1e-6). 1e-5 absolute + 1e-5 relative leaves a 10x margin and still fails on
// any real mistake (a wrong mean or variance shifts outputs by ~1e-2 and more).
constexpr double kAtol = 1e-5, kRtol = 1e-5;

struct Options {
    bool affine, track;
    std::optional<double> momentum;
};

using Param = std::tuple<Shape, bool, bool, bool>;  // shape, affine, track, momentum none

class ForwardGrid : public ::testing::TestWithParam<Param> {};

TEST_P(ForwardGrid, TrainingStepsThenEvalMatchReference) {
    const auto [shape, affine, track, cumulative] = GetParam();
    std::mt19937 rng(std::hash<std::string>()(name(shape)) + affine * 2 + track * 4 + cumulative);
    const std::optional<double> momentum =
        cumulative ? std::nullopt : std::optional<double>(0.1);
    BatchNorm2d bn(shape.c, 1e-5, momentum, affine, track);
    reference::Module ref(shape.c);
    ref.momentum = momentum;
    ref.affine = affine;
    ref.track = track;
    randomize_parameters(rng, bn, ref);

    for (int step = 1; step <= 3; ++step) {
        SCOPED_TRACE("training step " + std::to_string(step));
        std::vector<float> x = random_vector(rng, shape.numel(), 0.7f * step, 1.0f + step);
        std::vector<float> y = poisoned(shape.numel());
        bn.forward(view(x, shape), view(y, shape));
        std::vector<double> want = ref.forward(shape, x);
        EXPECT_TRUE(all_close(y, want, kAtol, kRtol, [&](int64_t i) { return where(shape, i); }));
        EXPECT_EQ(bn.num_batches_tracked(), ref.num_batches_tracked);
        if (track) {
            EXPECT_TRUE(all_close(to_vector(bn.running_mean()), ref.running_mean, 1e-6, kRtol));
            EXPECT_TRUE(all_close(to_vector(bn.running_var()), ref.running_var, 1e-6, kRtol));
        } else {
            EXPECT_FALSE(bn.running_mean().defined());
            EXPECT_EQ(bn.num_batches_tracked(), 0);
        }
    }
    bn.eval();
    ref.training = false;
    std::vector<float> x = random_vector(rng, shape.numel(), -0.5f, 2.0f);
    std::vector<float> y = poisoned(shape.numel());
    bn.forward(view(x, shape), view(y, shape));
    EXPECT_TRUE(all_close(y, ref.forward(shape, x), kAtol, kRtol,
                          [&](int64_t i) { return "eval " + where(shape, i); }));
}

std::string param_name(const ::testing::TestParamInfo<Param> &info) {
    const auto [shape, affine, track, cumulative] = info.param;
    return name(shape) + (affine ? "_affine" : "_plain") + (track ? "_track" : "_notrack") +
           (cumulative ? "_cumulative" : "_momentum");
}

INSTANTIATE_TEST_SUITE_P(Grid, ForwardGrid,
                         ::testing::Combine(::testing::ValuesIn(grid_shapes()), ::testing::Bool(),
                                            ::testing::Bool(), ::testing::Bool()),
                         param_name);

// Robust statistics: mean = 1e4 * std. The float32 inputs are the data; float64 on the same
// inputs is the truth. E[x^2] - E[x]^2 in float32 would lose every digit here.
TEST(Forward, VarianceOfLargeMeanSmallSpreadIsAccurate) {
    const Shape s{8, 4, 16, 16};
    std::mt19937 rng(11);
    std::vector<float> x = random_vector(rng, s.numel(), 1e4f, 1.0f);
    BatchNorm2d bn(s.c, 1e-5, 1.0);  // momentum 1: running_var = unbiased batch variance
    std::vector<float> y = poisoned(s.numel());
    bn.forward(view(x, s), view(y, s));
    reference::Stats st = reference::batch_stats(s, x);
    const double m = static_cast<double>(s.per_channel());
    std::vector<float> rv = to_vector(bn.running_var()), rm = to_vector(bn.running_mean());
    for (int64_t c = 0; c < s.c; ++c) {
        const double want = st.var[c] * m / (m - 1);
        EXPECT_LT(std::abs(rv[c] - want) / want, 1e-4) << "channel " << c << ": " << rv[c]
                                                        << " vs " << want;
        EXPECT_LT(std::abs(rm[c] - st.mean[c]), 1e-3) << "channel " << c;
    }
}

TEST(Forward, ConstantChannelGivesExactlyBias) {
    const Shape s{3, 4, 5, 7};
    std::mt19937 rng(5);
    std::vector<float> x = random_vector(rng, s.numel());
    for (int64_t n = 0; n < s.n; ++n)  // channel 2 is constant
        for (int64_t i = 0; i < s.h * s.w; ++i) x[(n * s.c + 2) * s.h * s.w + i] = 1234.567f;
    BatchNorm2d bn(s.c);
    reference::Module ref(s.c);
    randomize_parameters(rng, bn, ref);
    std::vector<float> y = poisoned(s.numel());
    bn.forward(view(x, s), view(y, s));
    const float bias = bn.bias().data()[2];
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < s.h * s.w; ++i)
            ASSERT_EQ(y[(n * s.c + 2) * s.h * s.w + i], bias) << "n " << n << " i " << i;
}

// PyTorch: an empty batch gives an empty output, leaves the statistics alone, and still counts.
TEST(Forward, EmptyBatchBehavesLikePyTorch) {
    BatchNorm2d bn(3);
    std::vector<float> none;
    const StateDict before = bn.state_dict();
    bn.forward(Tensor(none.data() + 0, {0, 3, 4, 4}), Tensor(none.data(), {0, 3, 4, 4}));
    EXPECT_EQ(bn.num_batches_tracked(), 1);
    EXPECT_EQ(bn.state_dict().running_mean, before.running_mean);
    EXPECT_EQ(bn.state_dict().running_var, before.running_var);
    bn.eval();
    bn.forward(Tensor(none.data(), {0, 3, 4, 4}), Tensor(none.data(), {0, 3, 4, 4}));
    EXPECT_EQ(bn.num_batches_tracked(), 1);
}

// A strided view (a crop of wider rows, and every other batch item) gives the same numbers as
// a contiguous copy of the same elements, and writes nothing outside the view.
TEST(Forward, StridedViewsMatchContiguous) {
    const Shape s{3, 5, 6, 9};
    const int64_t row = 13, n_stride = 2 * s.c * s.h * row;  // padded rows, gaps between items
    std::mt19937 rng(3);
    std::vector<float> big = random_vector(rng, s.n * n_stride);
    std::vector<float> out_big = poisoned(s.n * n_stride);
    const std::vector<int64_t> sizes = {s.n, s.c, s.h, s.w},
                               strides = {n_stride, s.h * row, row, 1};
    std::vector<float> dense(s.numel());
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t h = 0; h < s.h; ++h)
                for (int64_t w = 0; w < s.w; ++w)
                    dense[s.index(n, c, h, w)] = big[n * n_stride + c * s.h * row + h * row + w];
    for (bool training : {true, false}) {
        SCOPED_TRACE(training ? "training" : "eval");
        BatchNorm2d a(s.c), b(s.c);
        a.train(training);
        b.train(training);
        std::vector<float> y_dense = poisoned(s.numel());
        std::fill(out_big.begin(), out_big.end(), std::numeric_limits<float>::quiet_NaN());
        a.forward(view(dense, s), view(y_dense, s));
        b.forward(Tensor(big.data(), sizes, strides), Tensor(out_big.data(), sizes, strides));
        int64_t written = 0;
        for (int64_t n = 0; n < s.n; ++n)
            for (int64_t c = 0; c < s.c; ++c)
                for (int64_t h = 0; h < s.h; ++h)
                    for (int64_t w = 0; w < s.w; ++w) {
                        const float got = out_big[n * n_stride + c * s.h * row + h * row + w];
                        ASSERT_EQ(got, y_dense[s.index(n, c, h, w)]) << where(s, s.index(n, c, h, w));
                    }
        for (float v : out_big) written += !std::isnan(v);
        EXPECT_EQ(written, s.numel()) << "wrote outside the view";
    }
}

TEST(Forward, AllocatingOverloadMatches) {
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(9);
    std::vector<float> x = random_vector(rng, s.numel());
    BatchNorm2d a(s.c), b(s.c);
    std::vector<float> y = poisoned(s.numel());
    a.forward(view(x, s), view(y, s));
    EXPECT_EQ(b.forward(view(x, s)), y);
}

TEST(Forward, ResetAndStateDictRoundTrip) {
    const Shape s{4, 3, 5, 5};
    std::mt19937 rng(4);
    std::vector<float> x = random_vector(rng, s.numel(), 2.0f, 3.0f), y(s.numel());
    BatchNorm2d bn(s.c);
    reference::Module ref(s.c);
    randomize_parameters(rng, bn, ref);
    bn.forward(view(x, s), view(y, s));
    StateDict saved = bn.state_dict();
    EXPECT_EQ(saved.num_batches_tracked, 1);
    EXPECT_NE(saved.running_mean, std::vector<float>(s.c, 0.0f));

    bn.reset_running_stats();
    EXPECT_EQ(bn.state_dict().running_mean, std::vector<float>(s.c, 0.0f));
    EXPECT_EQ(bn.state_dict().running_var, std::vector<float>(s.c, 1.0f));
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    EXPECT_EQ(bn.state_dict().weight, saved.weight);  // parameters untouched

    bn.load_state_dict(saved);
    EXPECT_EQ(bn.state_dict().running_var, saved.running_var);
    EXPECT_EQ(bn.num_batches_tracked(), 1);

    bn.reset_parameters();
    EXPECT_EQ(bn.state_dict().weight, std::vector<float>(s.c, 1.0f));
    EXPECT_EQ(bn.state_dict().bias, std::vector<float>(s.c, 0.0f));
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    EXPECT_EQ(bn.to_string(),
              "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)");
}

TEST(Forward, ThreadCountDoesNotChangeResults) {
    const Shape s{8, 5, 33, 31};
    std::mt19937 rng(8);
    std::vector<float> x = random_vector(rng, s.numel(), 1.0f, 2.0f);
    std::vector<float> y1 = poisoned(s.numel()), y2 = poisoned(s.numel());
    const int before = num_threads();
    set_num_threads(1);
    BatchNorm2d a(s.c);
    a.forward(view(x, s), view(y1, s));
    set_num_threads(0);
    BatchNorm2d b(s.c);
    b.forward(view(x, s), view(y2, s));
    set_num_threads(before);
    EXPECT_EQ(y1, y2);
    EXPECT_EQ(a.state_dict().running_var, b.state_dict().running_var);
}

}  // namespace
}  // namespace bn2d::test
