// bn2d::functional (bn2d/functional.h), the stateless API the Python package calls: the same
// kernels as BatchNorm2d, so the same bits; SyncBatchNorm's steps for one process against a
// training step; every argument error before any kernel, running statistics untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "bn2d/bn2d.h"
#include "common.h"

namespace bn2d::test {
namespace {

namespace F = bn2d::functional;

struct Case {
    Shape shape;
    bool training;
};

std::vector<Case> cases() {
    std::vector<Case> v;
    // The seed, a split-strategy shape (7x7 planes, 32 channels) and primes.
    for (const Shape &s : {Shape{20, 100, 35, 45}, Shape{4, 32, 7, 7}, Shape{3, 7, 13, 17}})
        for (bool training : {true, false}) v.push_back({s, training});
    return v;
}

Tensor vec(std::vector<float> &v) { return Tensor(v.data(), {static_cast<int64_t>(v.size())}); }

void expect_bitwise(const std::vector<float> &got, const std::vector<float> &want,
                    const char *what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << what << "[" << i << "] not written (NaN poison)";
        ASSERT_EQ(got[i], want[i]) << what << "[" << i << "]";
    }
}

class FunctionalVsModule : public ::testing::TestWithParam<Case> {};

TEST_P(FunctionalVsModule, SameBitsAsTheModule) {
    const auto [s, training] = GetParam();
    std::mt19937 rng(std::random_device{}());
    const int64_t C = s.c;
    std::vector<float> x = random_vector(rng, s.numel(), 0.5f, 2.0f);
    std::vector<float> dy = random_vector(rng, s.numel());
    std::vector<float> weight = random_vector(rng, C, 1.0f, 0.2f);
    std::vector<float> bias = random_vector(rng, C);
    std::vector<float> running_mean = random_vector(rng, C, 0.0f, 0.3f);
    std::vector<float> running_var(C);
    for (float &v : running_var) v = 0.5f + std::abs(random_vector(rng, 1)[0]);

    BatchNorm2d module(C);
    module.load_state_dict(
        {to_f64(weight), to_f64(bias), to_f64(running_mean), to_f64(running_var), 3});
    module.train(training);
    std::vector<float> y_module = poisoned(s.numel()), dx_module = poisoned(s.numel());
    module.forward(view(x, s), view(y_module, s));
    module.backward(view(dy, s), view(dx_module, s));

    std::vector<float> y = poisoned(s.numel()), save_mean = poisoned(C), save_invstd = poisoned(C);
    F::ForwardArgs fwd;
    fwd.input = view(x, s);
    fwd.weight = vec(weight);
    fwd.bias = vec(bias);
    fwd.running_mean = vec(running_mean);
    fwd.running_var = vec(running_var);
    fwd.training = training;
    fwd.momentum = 0.1;
    fwd.out = view(y, s);
    fwd.save_mean = vec(save_mean);
    fwd.save_invstd = vec(save_invstd);
    F::batch_norm(fwd);
    expect_bitwise(y, y_module, "out");
    const StateDict state = module.state_dict();
    for (int64_t c = 0; c < C; ++c) {
        EXPECT_EQ(running_mean[c], static_cast<float>(state.running_mean[c])) << c;
        EXPECT_EQ(running_var[c], static_cast<float>(state.running_var[c])) << c;
    }

    std::vector<float> dx = poisoned(s.numel()), grad_weight = poisoned(C), grad_bias = poisoned(C);
    F::BackwardArgs bwd;
    bwd.grad_out = view(dy, s);
    bwd.input = view(x, s);
    bwd.weight = vec(weight);
    if (training) {
        bwd.save_mean = vec(save_mean);
        bwd.save_invstd = vec(save_invstd);
    } else {
        bwd.running_mean = vec(running_mean);
        bwd.running_var = vec(running_var);
    }
    bwd.training = training;
    bwd.grad_input = view(dx, s);
    bwd.grad_weight = vec(grad_weight);
    bwd.grad_bias = vec(grad_bias);
    F::batch_norm_backward(bwd);
    expect_bitwise(dx, dx_module, "grad_input");
    const float *gw = module.weight_grad().data<float>(), *gb = module.bias_grad().data<float>();
    expect_bitwise(grad_weight, std::vector<float>(gw, gw + C), "grad_weight");
    expect_bitwise(grad_bias, std::vector<float>(gb, gb + C), "grad_bias");
}

INSTANTIATE_TEST_SUITE_P(All, FunctionalVsModule, ::testing::ValuesIn(cases()),
                         [](const auto &info) {
                             return info.param.shape.name() +
                                    (info.param.training ? "_train" : "_eval");
                         });

// SyncBatchNorm's steps with one process: stats, gather, the eval-form normalization, then
// backward_reduce and backward_elemt, equal a training step within float32 rounding.
TEST(Functional, SyncStepsForOneProcessAreATrainingStep) {
    const Shape s{6, 24, 9, 11};
    std::mt19937 rng(std::random_device{}());
    const int64_t C = s.c, count = s.n * s.h * s.w;
    std::vector<float> x = random_vector(rng, s.numel(), 1.0f, 3.0f);
    std::vector<float> dy = random_vector(rng, s.numel());
    std::vector<float> weight = random_vector(rng, C, 1.0f, 0.2f), bias = random_vector(rng, C);

    // The training step.
    std::vector<float> rm_ref(C, 0.2f), rv_ref(C, 1.5f), y_ref(s.numel()), mean_ref(C),
        invstd_ref(C), dx_ref(s.numel()), gw_ref(C), gb_ref(C);
    F::ForwardArgs fwd;
    fwd.input = view(x, s);
    fwd.weight = vec(weight);
    fwd.bias = vec(bias);
    fwd.running_mean = vec(rm_ref);
    fwd.running_var = vec(rv_ref);
    fwd.out = view(y_ref, s);
    fwd.save_mean = vec(mean_ref);
    fwd.save_invstd = vec(invstd_ref);
    F::batch_norm(fwd);
    F::BackwardArgs bwd;
    bwd.grad_out = view(dy, s);
    bwd.input = view(x, s);
    bwd.weight = vec(weight);
    bwd.save_mean = vec(mean_ref);
    bwd.save_invstd = vec(invstd_ref);
    bwd.grad_input = view(dx_ref, s);
    bwd.grad_weight = vec(gw_ref);
    bwd.grad_bias = vec(gb_ref);
    F::batch_norm_backward(bwd);

    // The same through SyncBatchNorm's steps.
    std::vector<double> partial(3 * C), sums(2 * C);
    F::batch_norm_stats(view(x, s), Tensor(partial.data(), DType::float64, {3, C}));
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(partial[c], static_cast<double>(count));
    std::vector<float> rm(C, 0.2f), rv(C, 1.5f), mean = poisoned(C), invstd = poisoned(C),
                                                 var = poisoned(C);
    F::GatherStatsArgs gather;
    gather.gathered = Tensor(partial.data(), DType::float64, {1, 3, C});
    gather.running_mean = vec(rm);
    gather.running_var = vec(rv);
    gather.save_mean = vec(mean);
    gather.save_invstd = vec(invstd);
    gather.var = vec(var);
    F::batch_norm_gather_stats(gather);
    std::vector<float> y = poisoned(s.numel());
    F::ForwardArgs norm = fwd;
    norm.running_mean = vec(mean);
    norm.running_var = vec(var);
    norm.training = false;
    norm.out = view(y, s);
    F::batch_norm(norm);
    std::vector<float> dx = poisoned(s.numel()), gw = poisoned(C), gb = poisoned(C);
    F::BackwardArgs step = bwd;
    step.save_mean = vec(mean);
    step.save_invstd = vec(invstd);
    step.grad_input = Tensor();
    step.grad_weight = vec(gw);
    step.grad_bias = vec(gb);
    F::batch_norm_backward_reduce(step, Tensor(sums.data(), DType::float64, {2, C}));
    step.grad_input = view(dx, s);
    F::batch_norm_backward_elemt(step, Tensor(sums.data(), DType::float64, {2, C}), count);

    auto expect_near = [](const std::vector<float> &got, const std::vector<float> &want, double tol,
                          const char *what) {
        for (size_t i = 0; i < got.size(); ++i)
            ASSERT_NEAR(got[i], want[i], tol * (1 + std::abs(want[i]))) << what << "[" << i << "]";
    };
    expect_near(mean, mean_ref, 1e-6, "mean");
    expect_near(invstd, invstd_ref, 1e-5, "invstd");
    expect_near(rm, rm_ref, 1e-6, "running_mean");
    expect_near(rv, rv_ref, 1e-5, "running_var");
    expect_near(y, y_ref, 1e-5, "out");
    expect_near(gw, gw_ref, 1e-4, "grad_weight");
    expect_near(gb, gb_ref, 1e-4, "grad_bias");
    expect_near(dx, dx_ref, 1e-4, "grad_input");
}

// Argument errors throw before any kernel runs: outputs and running statistics untouched.
TEST(Functional, ErrorsLeaveEverythingAsItWas) {
    const Shape s{4, 6, 5, 5};
    std::mt19937 rng(std::random_device{}());
    std::vector<float> x = random_vector(rng, s.numel()), y = poisoned(s.numel());
    std::vector<float> rm(6, 0.25f), rv(6, 2.0f), short_weight(5, 1.0f), mean(6), invstd(6);
    std::vector<double> wrong_dtype(6, 1.0);
    auto run = [&](auto &&edit, const char *expected) {
        F::ForwardArgs a;
        a.input = view(x, s);
        a.running_mean = vec(rm);
        a.running_var = vec(rv);
        a.out = view(y, s);
        a.save_mean = vec(mean);
        a.save_invstd = vec(invstd);
        edit(a);
        try {
            F::batch_norm(a);
            ADD_FAILURE() << "no error; expected " << expected;
        } catch (const Error &e) {
            EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
        }
        for (size_t c = 0; c < rm.size(); ++c) {
            EXPECT_EQ(rm[c], 0.25f);
            EXPECT_EQ(rv[c], 2.0f);
        }
        for (float v : y) ASSERT_TRUE(std::isnan(v)) << "out written by a failed call";
    };
    run([&](F::ForwardArgs &a) { a.weight = vec(short_weight); },
        "weight has 5 values (num_features) but the input has C = 6 channels");
    run([&](F::ForwardArgs &a) { a.weight = Tensor(wrong_dtype.data(), DType::float64, {6}); },
        "weight is float64, expected float32");
    run([&](F::ForwardArgs &a) { a.running_var = Tensor(); }, "go together");
    run(
        [&](F::ForwardArgs &a) {
            a.training = false;
            a.running_mean = a.running_var = Tensor();
        },
        "required when training is false");
    run([&](F::ForwardArgs &a) { a.eps = -1; }, "eps must be finite");
    run([&](F::ForwardArgs &a) { a.out = view(x, s); }, "overlaps input");
    run([&](F::ForwardArgs &a) { a.input = Tensor(x.data(), {4, 6, 25}); }, "must be 4-D");
}

}  // namespace
}  // namespace bn2d::test
