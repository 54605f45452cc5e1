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
    const std::optional<double> momentum = cumulative ? std::nullopt : std::optional<double>(0.1);
    BatchNorm2d bn(shape.c, 1e-5, momentum, affine, track);
    reference::Module ref = reference_like(bn);
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
    for (float stddev : {1.0f, 1e-2f}) {
        SCOPED_TRACE("mean = 1e4 * std, std = " + std::to_string(stddev));
        std::mt19937 rng(11 + static_cast<unsigned>(stddev * 100));
        std::vector<float> x = random_vector(rng, s.numel(), 1e4f * stddev, stddev);
        BatchNorm2d bn(s.c, 1e-5, 1.0);  // momentum 1: running_var = unbiased batch variance
        std::vector<float> y = poisoned(s.numel());
        bn.forward(view(x, s), view(y, s));
        reference::Stats st = reference::batch_stats(s, x);
        const double m = static_cast<double>(s.per_channel());
        std::vector<float> rv = to_vector(bn.running_var()), rm = to_vector(bn.running_mean());
        for (int64_t c = 0; c < s.c; ++c) {
            const double want = st.var[c] * m / (m - 1);
            EXPECT_LT(std::abs(rv[c] - want) / want, 1e-4)
                << "channel " << c << ": running_var " << rv[c] << " vs " << want;
            // The mean is stored in float32: half an ulp of 1e4*std is 4.9e-4*std.
            EXPECT_LE(std::abs(rm[c] - st.mean[c]), 1e-3 * stddev) << "channel " << c;
        }
        // The output is normalized by the same statistics: zero mean and unit variance per
        // channel to float32 accuracy. The mean is a float32 (rounded to ulp(1e4 * std) / 2 =
        // 4.9e-4 std), so every output carries up to ~5e-4 of that offset: the tolerance.
        reference::Module ref(s.c);
        ref.momentum = 1.0;
        std::vector<double> want = ref.forward(s, x);
        EXPECT_TRUE(all_close(y, want, 1e-3, 1e-5, [&](int64_t i) { return where(s, i); }));
        // Eval with those running statistics (momentum 1): the eval output uses the unbiased
        // variance, still within the same tolerance of float64.
        bn.eval();
        ref.training = false;
        std::vector<float> y_eval = poisoned(s.numel());
        bn.forward(view(x, s), view(y_eval, s));
        EXPECT_TRUE(all_close(y_eval, ref.forward(s, x), 1e-3, 1e-5,
                              [&](int64_t i) { return "eval " + where(s, i); }));
    }
}

// The statistics shift each channel by its first sample (bn2d_algorithm.h). A first sample
// that is a far outlier (a hot pixel 1000 std away) brings back the cancellation the shift
// avoids; the CPU kernels accumulate in float64, so the variance must stay accurate anyway.
TEST(Forward, OutlierFirstSampleKeepsVarianceAccurate) {
    const Shape s{4, 2, 128, 128};
    std::mt19937 rng(12);
    std::vector<float> x = random_vector(rng, s.numel());
    x[s.index(0, 0, 0, 0)] = 1000.0f;
    x[s.index(0, 1, 0, 0)] = -3000.0f;
    BatchNorm2d bn(s.c, 1e-5, 1.0);
    std::vector<float> y = poisoned(s.numel());
    bn.forward(view(x, s), view(y, s));
    const reference::Stats st = reference::batch_stats(s, x);
    const double m = double(s.per_channel());
    for (int64_t c = 0; c < s.c; ++c) {
        const double want = st.var[c] * m / (m - 1);
        EXPECT_LT(std::abs(to_vector(bn.running_var())[c] - want) / want, 1e-4) << "channel " << c;
    }
    reference::Module ref(s.c);
    EXPECT_TRUE(
        all_close(y, ref.forward(s, x), 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
}

// eps enters every output; with the grid's eps = 1e-5 and unit-variance data a wrong eps would
// hide under the tolerance. Small variance and a large eps make it dominate: training, eval
// and backward, and set_eps() takes effect on the next call.
TEST(Forward, EpsIsApplied) {
    const Shape s{4, 6, 7, 9};
    std::mt19937 rng(19);
    for (double eps : {0.5, 0.0, 2e-3}) {
        SCOPED_TRACE("eps " + std::to_string(eps));
        BatchNorm2d bn(s.c, 1e-5);
        bn.set_eps(eps);
        EXPECT_EQ(bn.eps(), eps);
        reference::Module ref(s.c);
        ref.eps = eps;
        randomize_parameters(rng, bn, ref);
        std::vector<float> x = random_vector(rng, s.numel(), 0.2f, 0.05f), y = poisoned(s.numel());
        bn.forward(view(x, s), view(y, s));
        EXPECT_TRUE(
            all_close(y, ref.forward(s, x), 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
        std::vector<float> dy = random_vector(rng, s.numel()), dx = poisoned(s.numel());
        bn.backward(view(dy, s), view(dx, s));
        auto g = ref.backward(s, x, dy);
        EXPECT_TRUE(all_close(dx, g.input, input_grad_atol(g.input), 1e-5,
                              [&](int64_t i) { return where(s, i); }));
        bn.eval();
        ref.training = false;
        bn.forward(view(x, s), view(y, s));
        EXPECT_TRUE(all_close(y, ref.forward(s, x), 1e-5, 1e-5,
                              [&](int64_t i) { return "eval " + where(s, i); }));
    }
}

TEST(Forward, ConstantChannelGivesExactlyBias) {
    const Shape s{3, 4, 5, 7};
    std::mt19937 rng(5);
    std::vector<float> x = random_vector(rng, s.numel());
    for (int64_t n = 0; n < s.n; ++n)  // channel 2 is constant
        for (int64_t i = 0; i < s.h * s.w; ++i) x[(n * s.c + 2) * s.h * s.w + i] = 1234.567f;
    for (bool affine : {true, false}) {
        SCOPED_TRACE(affine ? "affine" : "plain");
        BatchNorm2d bn(s.c, 1e-5, 0.1, affine);
        reference::Module ref(s.c);
        randomize_parameters(rng, bn, ref);
        std::vector<float> y = poisoned(s.numel());
        bn.forward(view(x, s), view(y, s));
        const float bias = affine ? bn.bias().data()[2] : 0.0f;
        for (int64_t n = 0; n < s.n; ++n)
            for (int64_t i = 0; i < s.h * s.w; ++i) {
                const int64_t at = (n * s.c + 2) * s.h * s.w + i;
                ASSERT_EQ(y[at], bias) << where(s, at);  // bitwise: 0 * scale + bias
            }
        // And its running variance moved towards 0 exactly: (1 - 0.1) * 1 + 0.1 * 0.
        EXPECT_EQ(to_vector(bn.running_var())[2], 0.9f);
    }
}

// PyTorch accepts BatchNorm2d(0): a module with no channels, whose tensors are all empty. Its
// forward counts batches and its backward does nothing; a training batch with one value per
// channel is still an error. (BatchNorm2d(0) was rejected before.)
TEST(Forward, ZeroFeaturesModuleIsANoOp) {
    BatchNorm2d bn(0);
    EXPECT_EQ(bn.num_features(), 0);
    EXPECT_EQ(bn.to_string(),
              "BatchNorm2d(0, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)");
    float dummy = 1.0f, dummy_out = 2.0f;
    const std::vector<int64_t> sizes = {4, 0, 5, 6};
    bn.forward(Tensor(&dummy, sizes), Tensor(&dummy_out, sizes));
    EXPECT_TRUE(bn.forward(Tensor(nullptr, sizes)).empty());
    EXPECT_EQ(dummy_out, 2.0f) << "wrote to an empty output";
    EXPECT_EQ(bn.num_batches_tracked(), 2);
    bn.backward(Tensor(nullptr, sizes), Tensor(nullptr, sizes));
    EXPECT_TRUE(bn.backward(Tensor(nullptr, sizes)).empty());
    const StateDict d = bn.state_dict();
    EXPECT_TRUE(d.weight.empty() && d.bias.empty() && d.running_mean.empty() &&
                d.running_var.empty());
    EXPECT_EQ(bn.weight().numel(), 0);
    bn.load_state_dict(d);
    bn.zero_grad();
    bn.reset_parameters();
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    EXPECT_THROW(bn.forward(Tensor(&dummy, {1, 0, 1, 1}), Tensor(&dummy_out, {1, 0, 1, 1})), Error);
    EXPECT_THROW(bn.forward(Tensor(&dummy, {4, 1, 5, 6}), Tensor(&dummy_out, {4, 1, 5, 6})), Error);
    bn.eval();
    bn.forward(Tensor(&dummy, {1, 0, 1, 1}), Tensor(&dummy_out, {1, 0, 1, 1}));  // eval: fine
    for (Device d : {Device::OpenCL, Device::Cuda}) {
        if (!device_available(d)) continue;
        SCOPED_TRACE(device_name(d));
        BatchNorm2d on(0);
        on.to(d);
        on.forward(Tensor::on_device(0, sizes, d), Tensor::on_device(0, sizes, d));
        EXPECT_EQ(on.num_batches_tracked(), 1);
        EXPECT_TRUE(on.state_dict().weight.empty());
        on.to(Device::CPU);
    }
}

// PyTorch: an empty batch gives an empty output, leaves the statistics alone, and still counts
// (so the next cumulative-average factor is 1/2). Eval and untracked modules count nothing.
TEST(Forward, EmptyBatchBehavesLikePyTorch) {
    for (const std::vector<int64_t> &sizes :
         {std::vector<int64_t>{0, 3, 4, 4}, std::vector<int64_t>{2, 3, 0, 4}}) {
        SCOPED_TRACE(Tensor(nullptr, sizes).shape_string());
        float dummy = 1.0f, dummy_out = 2.0f;
        const Tensor x(&dummy, sizes), y(&dummy_out, sizes), null_x(nullptr, sizes);
        BatchNorm2d bn(3, 1e-5, std::nullopt);
        reference::Module ref(3);
        ref.momentum = std::nullopt;
        std::mt19937 rng(7);
        randomize_parameters(rng, bn, ref);
        const StateDict before = bn.state_dict();
        bn.forward(x, y);
        EXPECT_EQ(dummy_out, 2.0f) << "wrote to an empty output";
        EXPECT_EQ(bn.num_batches_tracked(), 1);
        EXPECT_EQ(bn.state_dict().running_mean, before.running_mean);
        EXPECT_EQ(bn.state_dict().running_var, before.running_var);
        EXPECT_EQ(bn.state_dict().weight, before.weight);
        EXPECT_TRUE(
            bn.forward(null_x).empty());  // the allocating overload; null is fine when empty
        EXPECT_EQ(bn.num_batches_tracked(), 2);
        // Backward of an empty batch: nothing to do, parameter gradients stay 0.
        bn.backward(null_x, null_x);
        EXPECT_EQ(to_vector(bn.weight_grad()), std::vector<float>(3, 0.0f));
        // The count matters: the next real batch averages with factor 1/3.
        ref.num_batches_tracked = 2;
        const Shape s{2, 3, 4, 5};
        std::vector<float> xs = random_vector(rng, s.numel()), ys = poisoned(s.numel());
        bn.forward(view(xs, s), view(ys, s));
        ref.forward(s, xs);
        EXPECT_EQ(bn.num_batches_tracked(), 3);
        EXPECT_TRUE(all_close(to_vector(bn.running_mean()), ref.running_mean, 1e-6, 1e-5));
        EXPECT_TRUE(all_close(to_vector(bn.running_var()), ref.running_var, 1e-6, 1e-5));
        bn.eval();
        bn.forward(x, y);
        EXPECT_EQ(bn.num_batches_tracked(), 3);
        BatchNorm2d untracked(3, 1e-5, 0.1, true, false);
        untracked.forward(x, y);
        EXPECT_EQ(untracked.num_batches_tracked(), 0);
    }
}

// ---- Strided views ----------------------------------------------------------------------------
// A Layout places an NCHW tensor inside a bigger buffer: strides in elements and an offset.
// Every layout keeps W innermost with stride 1 (the only constraint of the API), so the module
// must give the same numbers as on a contiguous copy, and write nothing outside the view.
struct Layout {
    std::string name;
    std::vector<int64_t> strides;
    int64_t offset, buffer_size;
};

Layout make_layout(const std::string &kind, const Shape &s) {
    const int64_t plane = s.h * s.w;
    if (kind == "contiguous") return {kind, {s.c * plane, plane, s.w, 1}, 0, s.numel()};
    if (kind == "padded_rows_batch_gaps") {  // a crop of wider rows, every other batch item
        const int64_t row = s.w + 7, nstride = 2 * s.c * s.h * row;
        return {kind, {nstride, s.h * row, row, 1}, 0, s.n * nstride};
    }
    if (kind == "unaligned_crop") {  // x[:, :, 1:, 3:] of a bigger H and W: base not aligned
        const int64_t W2 = s.w + 5, H2 = s.h + 2;
        return {kind, {s.c * H2 * W2, H2 * W2, W2, 1}, W2 + 3, s.n * s.c * H2 * W2};
    }
    if (kind == "channel_slice") {  // x[:, 2:2+C] of a tensor with C+3 channels: dense planes
        const int64_t C2 = s.c + 3;
        return {kind, {C2 * plane, plane, s.w, 1}, 2 * plane, s.n * C2 * plane};
    }
    if (kind == "odd_batch_items") {  // x[1::2] of a batch twice as large: dense planes
        return {kind, {2 * s.c * plane, plane, s.w, 1}, s.c * plane, 2 * s.n * s.c * plane};
    }
    if (kind == "reversed_batch") {  // x.flip(0) as a view: a negative batch stride
        return {kind, {-s.c * plane, plane, s.w, 1}, (s.n - 1) * s.c * plane, s.numel()};
    }
    ADD_FAILURE() << "unknown layout " << kind;
    return {};
}

int64_t offset_of(const Layout &l, int64_t n, int64_t c, int64_t h, int64_t w) {
    return l.offset + n * l.strides[0] + c * l.strides[1] + h * l.strides[2] + w * l.strides[3];
}

// Dense <-> strided copies.
void scatter(const Shape &s, const Layout &l, const std::vector<float> &dense,
             std::vector<float> &buffer) {
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t h = 0; h < s.h; ++h)
                for (int64_t w = 0; w < s.w; ++w)
                    buffer[offset_of(l, n, c, h, w)] = dense[s.index(n, c, h, w)];
}
std::vector<float> gather(const Shape &s, const Layout &l, const std::vector<float> &buffer) {
    std::vector<float> dense(s.numel());
    for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < s.c; ++c)
            for (int64_t h = 0; h < s.h; ++h)
                for (int64_t w = 0; w < s.w; ++w)
                    dense[s.index(n, c, h, w)] = buffer[offset_of(l, n, c, h, w)];
    return dense;
}
Tensor view_in(std::vector<float> &buffer, const Shape &s, const Layout &l) {
    return Tensor(buffer.data() + l.offset, {s.n, s.c, s.h, s.w}, l.strides);
}
// Elements of the buffer outside the view must still hold the NaN poison.
::testing::AssertionResult untouched_outside(const Shape &s, const Layout &l,
                                             const std::vector<float> &buffer) {
    int64_t written = 0;
    for (float v : buffer) written += !std::isnan(v);
    // Inside the view every element was written (all_close rejects NaN), so the count of
    // non-NaN elements is numel exactly when nothing outside was touched.
    if (written == s.numel()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << written << " non-NaN elements in the buffer, expected " << s.numel()
           << ": wrote outside the view (or missed elements)";
}

using StridedParam = std::tuple<std::string, bool>;  // layout, training

class StridedViews : public ::testing::TestWithParam<StridedParam> {};

// Forward and backward on a strided x / out / grad_out / grad_input, against the same module
// run on contiguous copies: the same values (within float32 rounding: fused and unfused
// spatial loops may vectorize, hence round, differently) and the reference.
TEST_P(StridedViews, MatchContiguous) {
    const auto [kind, training] = GetParam();
    const Shape s{3, 5, 6, 37};  // W = 37: full vectors and a tail
    const Layout l = make_layout(kind, s);
    std::mt19937 rng(std::hash<std::string>()(kind) + training);
    auto at = [&](int64_t i) { return where(s, i); };

    BatchNorm2d dense_bn(s.c), strided_bn(s.c);
    reference::Module ref(s.c);
    randomize_parameters(rng, dense_bn, ref);
    strided_bn.load_state_dict(dense_bn.state_dict());
    // One training step on other data first, so eval uses non-trivial running statistics.
    std::vector<float> x0 = random_vector(rng, s.numel(), 1.0f, 2.0f), y0(s.numel());
    dense_bn.forward(view(x0, s), view(y0, s));
    strided_bn.forward(view(x0, s), view(y0, s));
    ref.forward(s, x0);
    dense_bn.train(training);
    strided_bn.train(training);
    ref.training = training;

    std::vector<float> x = random_vector(rng, s.numel(), -0.5f, 1.5f);
    std::vector<float> dy = random_vector(rng, s.numel());
    std::vector<float> x_buf = random_vector(rng, l.buffer_size, 100.0f, 50.0f);  // junk around
    std::vector<float> dy_buf = random_vector(rng, l.buffer_size, 100.0f, 50.0f);
    scatter(s, l, x, x_buf);
    scatter(s, l, dy, dy_buf);
    std::vector<float> y_buf = poisoned(l.buffer_size), dx_buf = poisoned(l.buffer_size);

    std::vector<float> y = poisoned(s.numel()), dx = poisoned(s.numel());
    dense_bn.forward(view(x, s), view(y, s));
    strided_bn.forward(view_in(x_buf, s, l), view_in(y_buf, s, l));
    const std::vector<double> y_ref = ref.forward(s, x);
    {
        SCOPED_TRACE("forward");
        EXPECT_TRUE(all_close(gather(s, l, y_buf), y, 1e-6, 1e-6, at));
        EXPECT_TRUE(all_close(gather(s, l, y_buf), y_ref, 1e-5, 1e-5, at));
        EXPECT_TRUE(untouched_outside(s, l, y_buf));
        const StateDict a = dense_bn.state_dict(), b = strided_bn.state_dict();
        EXPECT_TRUE(all_close(b.running_mean, a.running_mean, 1e-7, 1e-6));
        EXPECT_TRUE(all_close(b.running_var, a.running_var, 1e-7, 1e-6));
    }
    dense_bn.zero_grad();
    strided_bn.zero_grad();
    dense_bn.backward(view(dy, s), view(dx, s));
    strided_bn.backward(view_in(dy_buf, s, l), view_in(dx_buf, s, l));
    const auto g = ref.backward(s, x, dy);
    {
        SCOPED_TRACE("backward");
        EXPECT_TRUE(all_close(gather(s, l, dx_buf), dx, 1e-6, 1e-5, at));
        EXPECT_TRUE(untouched_outside(s, l, dx_buf));
        EXPECT_TRUE(all_close(to_vector(strided_bn.weight_grad()),
                              to_vector(dense_bn.weight_grad()), 1e-5, 1e-5));
        EXPECT_TRUE(all_close(to_vector(strided_bn.bias_grad()), to_vector(dense_bn.bias_grad()),
                              1e-5, 1e-5));
        EXPECT_TRUE(all_close(to_vector(strided_bn.weight_grad()), g.weight, 1e-4, 1e-5));
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, StridedViews,
                         ::testing::Combine(::testing::Values("padded_rows_batch_gaps",
                                                              "unaligned_crop", "channel_slice",
                                                              "odd_batch_items", "reversed_batch"),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<StridedParam> &info) {
                             return std::get<0>(info.param) +
                                    (std::get<1>(info.param) ? "_train" : "_eval");
                         });

// A size-1 dimension's stride is meaningless (PyTorch's x[..., ::8] of a W = 8 tensor has W = 1
// with stride 8, and is_contiguous() ignores it). Such views are accepted by the API (the W
// stride check applies to W > 1) and must compute the same as a contiguous tensor.
TEST(Forward, SizeOneDimensionsWithAnyStride) {
    struct Case {
        const char *what;
        Shape s;
        std::vector<int64_t> strides;  // inside a buffer of 8x the elements
    };
    const std::vector<Case> cases = {
        {"W = 1 with stride 8 (x[..., ::8])", {4, 3, 5, 1}, {3 * 5 * 8, 5 * 8, 8, 8}},
        {"H = 1 with stride 999", {4, 3, 1, 6}, {3 * 6, 6, 999, 1}},
        {"N = 1 with stride 0", {1, 3, 4, 6}, {0, 24, 6, 1}},
        {"H = W = 1 with odd strides", {5, 3, 1, 1}, {3 * 7, 7, 5, 3}},
    };
    for (const Case &k : cases) {
        SCOPED_TRACE(k.what);
        const Shape &s = k.s;
        std::mt19937 rng(std::hash<std::string>()(k.what));
        int64_t span = 1;
        for (int i = 0; i < 4; ++i)
            span += (std::vector<int64_t>{s.n, s.c, s.h, s.w}[i] - 1) * k.strides[i];
        const Layout l{k.what, k.strides, 0, span};
        std::vector<float> x = random_vector(rng, s.numel(), 0.5f, 2.0f);
        std::vector<float> x_buf = random_vector(rng, span), y_buf = poisoned(span);
        scatter(s, l, x, x_buf);
        BatchNorm2d a(s.c), b(s.c);
        std::vector<float> y = poisoned(s.numel());
        a.forward(view(x, s), view(y, s));
        try {
            b.forward(view_in(x_buf, s, l), view_in(y_buf, s, l));
        } catch (const Error &e) {
            ADD_FAILURE() << "rejected a valid view: " << e.what();
            continue;
        }
        EXPECT_TRUE(
            all_close(gather(s, l, y_buf), y, 1e-6, 1e-6, [&](int64_t i) { return where(s, i); }));
        EXPECT_TRUE(untouched_outside(s, l, y_buf));
    }
}

// A batch broadcast with a zero stride (x.expand(N, C, H, W) of one image): inputs may alias
// themselves; only outputs must not.
TEST(Forward, BroadcastInputMatchesMaterializedCopy) {
    const Shape s{4, 3, 5, 19};
    std::mt19937 rng(17);
    std::vector<float> image = random_vector(rng, s.c * s.h * s.w, 0.3f, 1.7f);
    std::vector<float> x(s.numel());
    for (int64_t n = 0; n < s.n; ++n)
        std::copy(image.begin(), image.end(), x.begin() + n * image.size());
    BatchNorm2d a(s.c), b(s.c);
    std::vector<float> y = poisoned(s.numel()), y2 = poisoned(s.numel());
    a.forward(view(x, s), view(y, s));
    b.forward(Tensor(image.data(), {s.n, s.c, s.h, s.w}, {0, s.h * s.w, s.w, 1}), view(y2, s));
    EXPECT_TRUE(all_close(y2, y, 1e-6, 1e-6, [&](int64_t i) { return where(s, i); }));
    EXPECT_TRUE(all_close(to_vector(b.running_var()), to_vector(a.running_var()), 1e-7, 1e-6));
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
    EXPECT_NE(saved.running_mean, std::vector<double>(s.c, 0.0));

    bn.reset_running_stats();
    EXPECT_EQ(bn.state_dict().running_mean, std::vector<double>(s.c, 0.0));
    EXPECT_EQ(bn.state_dict().running_var, std::vector<double>(s.c, 1.0));
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    EXPECT_EQ(bn.state_dict().weight, saved.weight);  // parameters untouched

    bn.load_state_dict(saved);
    EXPECT_EQ(bn.state_dict().running_var, saved.running_var);
    EXPECT_EQ(bn.num_batches_tracked(), 1);

    bn.reset_parameters();
    EXPECT_EQ(bn.state_dict().weight, std::vector<double>(s.c, 1.0));
    EXPECT_EQ(bn.state_dict().bias, std::vector<double>(s.c, 0.0));
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    EXPECT_EQ(bn.to_string(),
              "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)");
}

// The kernels split work by thread count only where the result does not depend on it: one
// thread and one per core give bitwise equal outputs, statistics and gradients, for few
// channels (in-channel parallelism) and many.
TEST(Forward, ThreadCountDoesNotChangeResults) {
    for (const Shape &s : {Shape{8, 5, 33, 31}, Shape{4, 64, 9, 10}, Shape{2, 1, 128, 130}}) {
        SCOPED_TRACE(name(s));
        std::mt19937 rng(8 + s.c);
        std::vector<float> x = random_vector(rng, s.numel(), 1.0f, 2.0f);
        std::vector<float> dy = random_vector(rng, s.numel());
        struct Run {
            std::vector<float> y, dx, gw, gb, rv;
        };
        auto run = [&](int threads) {
            const int before = num_threads();
            set_num_threads(threads);
            BatchNorm2d bn(s.c);
            Run r{poisoned(s.numel()), poisoned(s.numel()), {}, {}, {}};
            bn.forward(view(x, s), view(r.y, s));
            bn.backward(view(dy, s), view(r.dx, s));
            r.gw = to_vector(bn.weight_grad());
            r.gb = to_vector(bn.bias_grad());
            r.rv = to_vector(bn.running_var());
            set_num_threads(before);
            return r;
        };
        const Run one = run(1), all = run(0);
        EXPECT_EQ(one.y, all.y);
        EXPECT_EQ(one.dx, all.dx);
        EXPECT_EQ(one.gw, all.gw);
        EXPECT_EQ(one.gb, all.gb);
        EXPECT_EQ(one.rv, all.rv);
    }
}

}  // namespace
}  // namespace bn2d::test
