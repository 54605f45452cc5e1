// Every compiled CPU ISA variant runs and matches the reference, not only the one this CPU
// picks by default: every kernel of the table (training and eval forward, affine and plain;
// backward in both modes with each output mask) under set_max_cpu_isa(isa).
#include <cstdlib>
#include <tuple>

#include "common.h"

namespace bn2d::test {
namespace {

using Param = std::tuple<CpuIsa, bool>; // ISA, affine

class IsaVariant : public ::testing::TestWithParam<Param> {
protected:
    CpuIsa saved_ = max_cpu_isa();
    void SetUp() override {
        const CpuIsa isa = std::get<0>(GetParam());
        if (!cpu_supports(isa))
            GTEST_SKIP() << "this CPU cannot run the " << isa_name(isa) << " variant";
    }
    void TearDown() override { set_max_cpu_isa(saved_); }
};

TEST_P(IsaVariant, TrainEvalBackwardMatchReference) {
    const auto [isa, affine] = GetParam();
    set_max_cpu_isa(isa);
    ASSERT_EQ(max_cpu_isa(), isa);
    for (const Shape &s : {Shape{5, 7, 13, 17}, Shape{3, 3, 40, 41}, Shape{6, 12, 3, 3}}) {
        SCOPED_TRACE(name(s));
        auto at = [&](int64_t i) { return where(s, i); };
        std::mt19937 rng(static_cast<unsigned>(isa) * 100 + s.c + 7 * affine);
        BatchNorm2d bn(s.c, 1e-5, 0.1, affine);
        reference::Module ref = reference_like(bn);
        randomize_parameters(rng, bn, ref);
        for (bool training : {true, false}) {
            SCOPED_TRACE(training ? "training" : "eval");
            bn.train(training);
            ref.training = training;
            std::vector<float> x = random_vector(rng, s.numel(), 1.0f, 2.0f),
                               y = poisoned(s.numel());
            bn.forward(view(x, s), view(y, s));
            EXPECT_EQ(last_cpu_isa_used(), isa) << "forward ran " << isa_name(last_cpu_isa_used());
            EXPECT_TRUE(all_close(y, ref.forward(s, x), 1e-5, 1e-5, at));
            if (training) {
                EXPECT_TRUE(all_close(to_vector(bn.running_mean()), ref.running_mean, 1e-6, 1e-5));
                EXPECT_TRUE(all_close(to_vector(bn.running_var()), ref.running_var, 1e-6, 1e-5));
            }
            std::vector<float> dy = random_vector(rng, s.numel());
            const auto g = ref.backward(s, x, dy);
            const double atol_in = input_grad_atol(g.input);
            const double atol_p = param_grad_atol(s);
            for (BackwardMask mask : all_masks()) {
                SCOPED_TRACE(mask_name(mask));
                bn.zero_grad();
                std::vector<float> dx = poisoned(s.numel());
                bn.backward(view(dy, s), mask.input ? view(dx, s) : Tensor(), mask);
                if (mask.input || (mask.params && affine))
                    EXPECT_EQ(last_cpu_isa_used(), isa)
                        << "backward ran " << isa_name(last_cpu_isa_used());
                if (mask.input)
                    EXPECT_TRUE(all_close(dx, g.input, atol_in, 1e-5, at));
                if (affine && mask.params) {
                    EXPECT_TRUE(all_close(to_vector(bn.weight_grad()), g.weight, atol_p, 1e-5));
                    EXPECT_TRUE(all_close(to_vector(bn.bias_grad()), g.bias, atol_p, 1e-5));
                }
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Cpu, IsaVariant,
                         ::testing::Combine(::testing::ValuesIn(compiled_cpu_isas()),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<Param> &info) {
                             return std::string(isa_name(std::get<0>(info.param))) +
                                    (std::get<1>(info.param) ? "_affine" : "_plain");
                         });

// With no cap, the best variant this CPU supports runs.
TEST(Isa, DefaultIsTheBestSupported) {
    if (std::getenv("BN2D_MAX_CPU_ISA"))
        GTEST_SKIP() << "capped from the environment (BN2D_MAX_CPU_ISA)";
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (!cpu_supports(isa))
            continue;
        BatchNorm2d bn(2);
        std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, y(8);
        bn.forward(Tensor::nchw(x.data(), 2, 2, 1, 2), Tensor::nchw(y.data(), 2, 2, 1, 2));
        EXPECT_EQ(last_cpu_isa_used(), isa) << "ran " << isa_name(last_cpu_isa_used());
        return;
    }
}

// The variants agree with each other closely (each is within float32 rounding of float64).
TEST(Isa, VariantsAgree) {
    const Shape s{4, 9, 21, 23};
    std::mt19937 rng(41);
    std::vector<float> x = random_vector(rng, s.numel(), 3.0f, 2.0f),
                       dy = random_vector(rng, s.numel());
    const CpuIsa saved = max_cpu_isa();
    std::vector<float> y0, dx0;
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (!cpu_supports(isa))
            continue;
        SCOPED_TRACE(isa_name(isa));
        set_max_cpu_isa(isa);
        BatchNorm2d bn(s.c);
        std::vector<float> y = poisoned(s.numel()), dx = poisoned(s.numel());
        bn.forward(view(x, s), view(y, s));
        bn.backward(view(dy, s), view(dx, s));
        if (y0.empty()) {
            y0 = y;
            dx0 = dx;
            continue;
        }
        EXPECT_TRUE(all_close(y, y0, 2e-6, 2e-6, [&](int64_t i) { return where(s, i); }));
        EXPECT_TRUE(all_close(dx, dx0, 2e-6, 2e-5, [&](int64_t i) { return where(s, i); }));
    }
    set_max_cpu_isa(saved);
}

} // namespace
} // namespace bn2d::test
