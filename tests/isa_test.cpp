// Every compiled CPU ISA variant runs and matches the reference, not only the one this CPU
// picks by default.
#include "common.h"

namespace bn2d::test {
namespace {

class IsaVariant : public ::testing::TestWithParam<CpuIsa> {
protected:
    CpuIsa saved_ = max_cpu_isa();
    void TearDown() override { set_max_cpu_isa(saved_); }
};

TEST_P(IsaVariant, TrainEvalBackwardMatchReference) {
    const CpuIsa isa = GetParam();
    if (!cpu_supports(isa)) GTEST_SKIP() << "this CPU cannot run the " << isa_name(isa) << " variant";
    set_max_cpu_isa(isa);
    for (const Shape &s : {Shape{5, 7, 13, 17}, Shape{3, 3, 40, 41}, Shape{6, 12, 3, 3}}) {
        SCOPED_TRACE(name(s));
        std::mt19937 rng(static_cast<unsigned>(isa) * 100 + s.c);
        BatchNorm2d bn(s.c);
        reference::Module ref(s.c);
        randomize_parameters(rng, bn, ref);
        std::vector<float> x = random_vector(rng, s.numel(), 1.0f, 2.0f), y = poisoned(s.numel());
        bn.forward(view(x, s), view(y, s));
        EXPECT_EQ(last_cpu_isa_used(), isa);
        EXPECT_TRUE(all_close(y, ref.forward(s, x), 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
        std::vector<float> dy = random_vector(rng, s.numel()), dx = poisoned(s.numel());
        bn.backward(view(dy, s), view(dx, s));
        EXPECT_EQ(last_cpu_isa_used(), isa);
        auto g = ref.backward(s, x, dy);
        EXPECT_TRUE(all_close(dx, g.input, 1e-4, 1e-5, [&](int64_t i) { return where(s, i); }));
        EXPECT_TRUE(all_close(to_vector(bn.weight_grad()), g.weight, 1e-4, 1e-5));
        bn.eval();
        ref.training = false;
        bn.forward(view(x, s), view(y, s));
        EXPECT_EQ(last_cpu_isa_used(), isa);
        EXPECT_TRUE(all_close(y, ref.forward(s, x), 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
    }
}

INSTANTIATE_TEST_SUITE_P(Cpu, IsaVariant, ::testing::ValuesIn(compiled_cpu_isas()),
                         [](const ::testing::TestParamInfo<CpuIsa> &info) {
                             return std::string(isa_name(info.param));
                         });

TEST(Isa, DefaultIsTheBestSupported) {
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (!cpu_supports(isa)) continue;
        BatchNorm2d bn(2);
        std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, y(8);
        bn.forward(Tensor::nchw(x.data(), 2, 2, 1, 2), Tensor::nchw(y.data(), 2, 2, 1, 2));
        EXPECT_EQ(last_cpu_isa_used(), isa);
        return;
    }
}

}  // namespace
}  // namespace bn2d::test
