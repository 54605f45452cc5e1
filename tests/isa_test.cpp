// Every compiled CPU ISA variant that this CPU runs matches the reference, not only the one it
// picks by default: every kernel of the table (training and eval forward, affine and plain;
// backward in both modes with each output mask) under set_max_cpu_isa(isa). ISAs the CPU lacks
// skip with the reason; the cap's own rules, and the detection against the CPU's features, are
// tested on whatever CPU runs this (tests/CMakeLists.txt also runs it on emulated CPUs).
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include "common.h"

namespace bn2d::test {
namespace {

using Param = std::tuple<CpuIsa, bool>;  // ISA, affine

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
                if (mask.input) EXPECT_TRUE(all_close(dx, g.input, atol_in, 1e-5, at));
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

// The ISA a cap means: the best at or below it that this CPU supports (the last runs anywhere).
CpuIsa best_at_or_below(CpuIsa cap) {
    const std::vector<CpuIsa> isas = compiled_cpu_isas();
    size_t i = static_cast<size_t>(cap);
    while (i + 1 < isas.size() && !cpu_supports(isas[i])) ++i;
    return isas[i];
}

CpuIsa isa_of_one_forward() {
    BatchNorm2d bn(2);
    std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, y(8);
    bn.forward(Tensor::nchw(x.data(), 2, 2, 1, 2), Tensor::nchw(y.data(), 2, 2, 1, 2));
    return last_cpu_isa_used();
}

// With no cap, the best variant this CPU supports runs; BN2D_MAX_CPU_ISA caps it as
// set_max_cpu_isa() does (a name above what the CPU runs means the best it runs).
TEST(Isa, DefaultIsTheBestSupportedUnderTheEnvironmentsCap) {
    const char *env = std::getenv("BN2D_MAX_CPU_ISA");
    const CpuIsa expected = env ? best_at_or_below(isa_from_name(env)) : best_cpu_isa();
    EXPECT_TRUE(cpu_supports(expected));
    EXPECT_EQ(max_cpu_isa(), expected) << "reports " << isa_name(max_cpu_isa());
    EXPECT_EQ(isa_of_one_forward(), expected) << "ran " << isa_name(last_cpu_isa_used());
}

// The cap is a cap: every compiled ISA is accepted, calls then run the best at or below it that
// this CPU supports, and max_cpu_isa() says which. On a CPU without AVX-512 a cap of avx512
// means avx2; what max_cpu_isa() returns is always accepted back.
TEST(Isa, CapMeansTheBestSupportedAtOrBelowIt) {
    const CpuIsa saved = max_cpu_isa();
    for (CpuIsa cap : compiled_cpu_isas()) {
        SCOPED_TRACE(std::string("cap ") + isa_name(cap));
        const CpuIsa expected = best_at_or_below(cap);
        ASSERT_NO_THROW(set_max_cpu_isa(cap));
        EXPECT_EQ(max_cpu_isa(), expected) << "reports " << isa_name(max_cpu_isa());
        EXPECT_TRUE(cpu_supports(max_cpu_isa()));
        EXPECT_EQ(isa_of_one_forward(), expected) << "ran " << isa_name(last_cpu_isa_used());
        ASSERT_NO_THROW(set_max_cpu_isa(max_cpu_isa()));
        EXPECT_EQ(max_cpu_isa(), expected);
    }
    ASSERT_NO_THROW(set_max_cpu_isa(saved));
    EXPECT_EQ(max_cpu_isa(), saved);
}

// The CPU features each ISA of generators/variants.cmake needs, as /proc/cpuinfo names them
// (Halide's feature check reads cpuid; this reads what the kernel says).
const std::map<std::string, std::vector<std::string>> kIsaCpuinfoFlags = {
    {"avx512", {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"}},
    {"avx2", {"avx2", "fma", "f16c", "avx", "sse4_1"}},
    {"sse41", {"sse4_1"}},
    {"baseline", {}},
};

std::set<std::string> cpuinfo_flags() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("flags", 0) != 0) continue;
        std::istringstream words(line.substr(line.find(':') + 1));
        return {std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    }
    return {};
}

// The ISA detection against an independent account of the CPU: /proc/cpuinfo's flags, or, on
// an emulated CPU (qemu-user shows the host's /proc/cpuinfo), BN2D_TEST_EXPECT_BEST_ISA, which
// the emulated-CPU tests set to what the emulated model has.
TEST(Isa, DetectionMatchesTheCpu) {
    std::string expected;
    if (const char *env = std::getenv("BN2D_TEST_EXPECT_BEST_ISA")) {
        expected = env;
    } else {
        const std::set<std::string> flags = cpuinfo_flags();
        ASSERT_FALSE(flags.empty()) << "no flags line in /proc/cpuinfo";
        for (CpuIsa isa : compiled_cpu_isas()) {
            const auto needs = kIsaCpuinfoFlags.find(isa_name(isa));
            ASSERT_NE(needs, kIsaCpuinfoFlags.end())
                << "ISA " << isa_name(isa) << " of the table: add its cpuinfo flags to this test";
            if (std::all_of(needs->second.begin(), needs->second.end(),
                            [&](const std::string &f) { return flags.count(f) > 0; })) {
                expected = isa_name(isa);
                break;
            }
        }
    }
    EXPECT_EQ(isa_name(best_cpu_isa()), expected);
    // Every ISA above the best is reported missing, and the best and the last run.
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (isa == best_cpu_isa()) break;
        EXPECT_FALSE(cpu_supports(isa)) << isa_name(isa);
    }
    EXPECT_TRUE(cpu_supports(best_cpu_isa()));
    EXPECT_TRUE(cpu_supports(compiled_cpu_isas().back()));
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
        if (!cpu_supports(isa)) continue;
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

}  // namespace
}  // namespace bn2d::test
