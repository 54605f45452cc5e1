// Fused batchnorm + ReLU and batchnorm + add + ReLU on the CPU: every layout x dtype against
// the float64 reference, the ReLU's gradient at exactly zero, NaN, errors with the state
// untouched, and the kernels each call runs. `ctest -R relu` selects these, the libtorch
// composition tests (relu_torch_test.cpp) and the device ones (gpu_test.cpp).
#include <cmath>

#include "relu_check.h"

namespace bn2d::test {
namespace {

class relu_fused : public ::testing::TestWithParam<Variant> {};

TEST_P(relu_fused, MatchesFloat64Reference) {
    if (const std::string why = dtype_not_built(GetParam().dtype); !why.empty())
        GTEST_SKIP() << why;
    check_fused_against_reference(GetParam(), fused_shapes(), Device::CPU);
}

INSTANTIATE_TEST_SUITE_P(All, relu_fused, ::testing::ValuesIn(all_variants()),
                         [](const ::testing::TestParamInfo<Variant> &i) { return i.param.name(); });

Options relu_options() {
    Options o;
    o.activation = Activation::relu;
    return o;
}

// A constant channel normalizes to exactly its bias (x - mean is exactly 0): with bias 0 the
// ReLU sees exactly 0, and with a residual of exactly -bias too. PyTorch's ReLU passes no
// gradient at 0, so that channel gets none: grad_input, both parameter gradients and dz are 0
// there, while the other channels get theirs.
TEST(relu_semantics, GradientAtExactlyZeroIsZero) {
    const Shape s{3, 4, 5, 6};
    std::mt19937 rng(7);
    for (bool residual : {false, true}) {
        for (bool training : {true, false}) {
            SCOPED_TRACE(std::string(residual ? "add_relu" : "relu") +
                         (training ? " training" : " eval"));
            BatchNorm2d bn(s.c, relu_options());
            StateDict d = bn.state_dict();
            d.bias = {residual ? 0.75 : 0.0, 0.5, 0.25, 1.0};
            d.running_mean = {3.0, 0.0, 0.0, 0.0};  // eval: channel 0's mean is its value
            bn.load_state_dict(d);
            bn.train(training);
            std::vector<float> x = random_vector(rng, s.numel()), z(s.numel(), -0.75f);
            for (int64_t i = 0; i < s.h * s.w; ++i)
                for (int64_t n = 0; n < s.n; ++n) x[n * s.c * s.h * s.w + i] = 3.0f;  // channel 0
            std::vector<float> y = poisoned(s.numel()), dy = random_vector(rng, s.numel());
            std::vector<float> dx = poisoned(s.numel()), dz = poisoned(s.numel());
            if (residual)
                bn.forward_add(view(x, s), view(z, s), view(y, s));
            else
                bn.forward(view(x, s), view(y, s));
            if (residual)
                bn.backward_add(view(dy, s), view(dx, s), view(dz, s));
            else
                bn.backward(view(dy, s), view(dx, s));
            const std::vector<float> gw = to_vector(bn.weight_grad()),
                                     gb = to_vector(bn.bias_grad());
            for (int64_t n = 0; n < s.n; ++n)
                for (int64_t i = 0; i < s.h * s.w; ++i) {
                    const int64_t at = n * s.c * s.h * s.w + i;
                    ASSERT_EQ(y[at], 0.0f) << where(s, at);
                    EXPECT_EQ(dx[at], 0.0f) << where(s, at);
                    if (residual) EXPECT_EQ(dz[at], 0.0f) << where(s, at);
                }
            EXPECT_EQ(gw[0], 0.0f);
            EXPECT_EQ(gb[0], 0.0f);
            // The other channels: some gradient passes (positive outputs exist).
            EXPECT_NE(gb[1], 0.0f);
            EXPECT_NE(gb[2], 0.0f);
        }
    }
}

// relu(NaN) = NaN, and the gradient passes where y is NaN: in eval mode a NaN input gives a
// NaN output at that element only, and dx there is dy * scale; a residual NaN likewise.
TEST(relu_semantics, NanPassesThroughLikePyTorch) {
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(8);
    BatchNorm2d bn(s.c, relu_options());
    bn.eval();
    std::vector<float> x = random_vector(rng, s.numel()), z = random_vector(rng, s.numel());
    std::vector<float> y = poisoned(s.numel()), dy = random_vector(rng, s.numel());
    std::vector<float> dx = poisoned(s.numel()), dz = poisoned(s.numel());
    const float nan = std::numeric_limits<float>::quiet_NaN();
    x[5] = nan;
    z[17] = nan;
    bn.forward_add(view(x, s), view(z, s), view(y, s));
    bn.backward_add(view(dy, s), view(dx, s), view(dz, s), BackwardMask{true, false});
    const double invstd = 1.0 / std::sqrt(1.0 + 1e-5);  // running_var 1, weight 1
    for (int64_t i = 0; i < s.numel(); ++i) {
        const double pre = x[i] * invstd + z[i];
        if (i == 5 || i == 17) {
            EXPECT_TRUE(std::isnan(y[i])) << where(s, i);
            EXPECT_EQ(dz[i], dy[i]) << where(s, i);
        } else {
            EXPECT_NEAR(y[i], pre > 0 ? pre : 0.0, 1e-5 * (1 + std::abs(pre))) << where(s, i);
            EXPECT_EQ(dz[i], y[i] > 0 ? dy[i] : 0.0f) << where(s, i);
        }
        EXPECT_NEAR(dx[i], dz[i] * invstd, 1e-6 * (1 + std::abs(dz[i]))) << where(s, i);
    }
}

// After forward_add, plain backward() gives dx and the parameter gradients (no dz), equal to
// backward_add's; backward_add after a forward without residual is an error.
TEST(relu_semantics, BackwardWithoutResidualGradient) {
    const Shape s{2, 5, 6, 7};
    std::mt19937 rng(9);
    BatchNorm2d a(s.c, relu_options()), b(s.c, relu_options());
    std::vector<float> x = random_vector(rng, s.numel(), 1.0f, 2.0f),
                       z = random_vector(rng, s.numel());
    std::vector<float> ya = poisoned(s.numel()), yb = poisoned(s.numel());
    std::vector<float> dy = random_vector(rng, s.numel()), dxa = poisoned(s.numel()),
                       dxb = poisoned(s.numel()), dz = poisoned(s.numel());
    a.forward_add(view(x, s), view(z, s), view(ya, s));
    b.forward_add(view(x, s), view(z, s), view(yb, s));
    a.backward(view(dy, s), view(dxa, s));
    b.backward_add(view(dy, s), view(dxb, s), view(dz, s));
    EXPECT_TRUE(bitwise_equal(ya, yb));
    EXPECT_TRUE(all_close(dxa, dxb, 1e-6, 1e-6, [&](int64_t i) { return where(s, i); }));
    EXPECT_TRUE(all_close(to_vector(a.bias_grad()), to_vector(b.bias_grad()), 1e-5, 1e-6,
                          [](int64_t i) { return "channel " + std::to_string(i); }));

    BatchNorm2d plain(s.c, relu_options());
    plain.forward(view(x, s), view(ya, s));
    const StateDict before = plain.state_dict();
    try {
        plain.backward_add(view(dy, s), view(dxa, s), view(dz, s));
        ADD_FAILURE() << "backward_add after forward without residual";
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("forward_add"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(same_state(plain.state_dict(), before));
}

// Every bad argument of the fused calls is an Error that names it, and changes no state:
// running statistics, num_batches_tracked, parameter gradients, and what backward would use.
TEST(relu_errors, BadArgumentsLeaveStateUntouched) {
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(10);
    BatchNorm2d bn(s.c, relu_options());
    std::vector<float> x = random_vector(rng, s.numel()), z = random_vector(rng, s.numel());
    std::vector<float> y(s.numel()), dy = random_vector(rng, s.numel()), dx(s.numel()),
                                     dz(s.numel()), small(2 * 3 * 4 * 4);
    std::vector<double> z64(s.numel(), 1.0);
    bn.forward_add(view(x, s), view(z, s), view(y, s));
    bn.backward_add(view(dy, s), view(dx, s), view(dz, s));
    const StateDict before = bn.state_dict();
    const std::vector<float> gw = to_vector(bn.weight_grad()), dz_before = dz;
    auto expect_error = [&](auto &&call, const std::string &needle) {
        try {
            call();
            ADD_FAILURE() << "no error; expected one mentioning " << needle;
        } catch (const Error &e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
        EXPECT_TRUE(same_state(bn.state_dict(), before));
        EXPECT_TRUE(bitwise_equal(to_vector(bn.weight_grad()), gw));
    };
    const Tensor x_t = view(x, s), y_t = view(y, s), z_t = view(z, s);
    expect_error(
        [&] {
            bn.forward_add(x_t, Tensor(small.data(), {2, 3, 4, 4}), y_t);
        },
        "residual has shape");
    expect_error(
        [&] {
            bn.forward_add(x_t, Tensor(z64.data(), DType::float64, {2, 3, 4, 5}), y_t);
        },
        "residual is float64");
    expect_error([&] { bn.forward_add(x_t, y_t, y_t); }, "out overlaps residual");
    expect_error([&] { bn.forward_add(x_t, Tensor(), y_t); }, "residual is null");
    // A training step updates the running statistics: no input may live there.
    Tensor rv = bn.running_var();
    expect_error(
        [&] {
            bn.forward_add(Tensor(x.data(), {1, 3, 1, 1}), Tensor(rv.data(), {1, 3, 1, 1}),
                           Tensor(y.data(), {1, 3, 1, 1}));
        },
        "residual overlaps the module's running_var()");
    expect_error([&] { bn.backward_add(view(dy, s), view(dx, s), view(dy, s)); },
                 "grad_residual overlaps grad_out");
    expect_error([&] { bn.backward_add(view(dy, s), view(dx, s), view(dx, s)); },
                 "grad_residual overlaps grad_input");
    expect_error([&] { bn.backward_add(view(dy, s), view(dx, s), y_t); },
                 "grad_residual overlaps the forward output");
    expect_error([&] { bn.backward(view(dy, s), y_t); }, "grad_input overlaps the forward output");
    expect_error(
        [&] {
            bn.backward_add(view(dy, s), view(dx, s), Tensor(small.data(), {2, 3, 4, 4}));
        },
        "grad_residual has shape");
    Options bad;
    bad.activation = static_cast<Activation>(7);
    expect_error([&] { BatchNorm2d(3, bad); }, "unknown activation 7");
    expect_error([&] { bn.set_activation(static_cast<Activation>(7)); }, "unknown activation 7");
    EXPECT_EQ(bn.activation(), Activation::relu);
    EXPECT_EQ(bn.to_string(),
              "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, "
              "activation=relu)");
    std::vector<float> dz2 = poisoned(s.numel());
    bn.backward_add(view(dy, s), view(dx, s), view(dz2, s));
    EXPECT_TRUE(bitwise_equal(dz2, dz_before));  // the saved forward survived the errors
}

// What each fused call runs (BN2D_VERBOSE): one kernel per forward, whatever the fusion; the
// residual's gradient is one more pass (grad_residual) before the batch norm's backward. The
// split strategy (bn2d::CpuStrategy) runs its own kernels, with the same epilogue in its
// pointwise pass.
TEST(relu_dispatch, OneKernelPerForward) {
    StrategyGuard fused(CpuStrategy::fused);
    const Shape s{2, 20, 6, 7};
    std::mt19937 rng(11);
    BatchNorm2d bn(s.c, relu_options());
    std::vector<float> x = random_vector(rng, s.numel()), z = random_vector(rng, s.numel());
    std::vector<float> y(s.numel()), dy = random_vector(rng, s.numel()), dx(s.numel()),
                                     dz(s.numel());
    auto ops_of = [&](auto &&call) {
        set_verbose(true);
        ::testing::internal::CaptureStderr();
        call();
        const std::string err = ::testing::internal::GetCapturedStderr();
        set_verbose(false);
        std::vector<std::string> ops;
        for (const std::string &line : split(err, '\n'))
            if (line.rfind("bn2d_verbose,exec,", 0) == 0) ops.push_back(split(line, ',')[3]);
        return ops;
    };
    using V = std::vector<std::string>;
    EXPECT_EQ(ops_of([&] { bn.forward_add(view(x, s), view(z, s), view(y, s)); }),
              V{"train_fwd_f32_nchw"});
    EXPECT_EQ(ops_of([&] { bn.backward_add(view(dy, s), view(dx, s), view(dz, s)); }),
              (V{"eval_bwd_input_f32_nchw", "train_bwd_f32_nchw"}));
    EXPECT_EQ(ops_of([&] { bn.backward(view(dy, s), view(dx, s)); }), V{"train_bwd_f32_nchw"});
    set_cpu_strategy(CpuStrategy::split);
    EXPECT_EQ(ops_of([&] { bn.forward_add(view(x, s), view(z, s), view(y, s)); }),
              (V{"split_stats_f32_nchw", "sync_merge_f32_nchw", "eval_fwd_f32_nchw"}));
    EXPECT_EQ(ops_of([&] { bn.backward_add(view(dy, s), view(dx, s), view(dz, s)); }),
              (V{"eval_bwd_input_f32_nchw", "split_bwd_sums_f32_nchw", "sync_bwd_input_f32_nchw"}));
    bn.eval();
    EXPECT_EQ(ops_of([&] { bn.forward(view(x, s), view(y, s)); }), V{"eval_fwd_f32_nchw"});
}

}  // namespace
}  // namespace bn2d::test
