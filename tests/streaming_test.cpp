// Streaming stores (bn2d::set_streaming_stores; the _nt kernels of generators/variants.cmake):
// they run exactly when the output's lines are aligned, match the float64 reference, give the
// ordinary kernels' results bit for bit, and leave every other call to the ordinary kernels.
#include <algorithm>
#include <cstring>

#include "layout_dtype_check.h"

namespace bn2d::test {
namespace {

// Sets the streaming mode for a scope.
class StreamingMode {
public:
    explicit StreamingMode(StreamingStores m) : saved_(streaming_stores()) {
        set_streaming_stores(m);
    }
    ~StreamingMode() { set_streaming_stores(saved_); }

private:
    StreamingStores saved_;
};

// Why this process cannot stream `v` ("" when it can): not built, or not for the ISA that runs.
std::string not_built(const Variant &v) {
    const BuildInfo &b = build_info();
    const std::string key = std::string("eval_fwd_") + dtype_short_name(v.dtype) + "_" + v.x_layout;
    if (std::find(b.streaming_kernels.begin(), b.streaming_kernels.end(), key) ==
        b.streaming_kernels.end())
        return "no streaming-store kernel " + key + " in this build (BN2D_STREAMING_STORES=OFF)";
    // The ISA calls run: the best this CPU supports at or below the cap.
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (static_cast<int>(isa) < static_cast<int>(max_cpu_isa()) || !cpu_supports(isa)) continue;
        if (std::find(b.streaming_isas.begin(), b.streaming_isas.end(), isa_name(isa)) ==
            b.streaming_isas.end())
            return std::string("no streaming-store kernels for the ") + isa_name(isa) +
                   " ISA this CPU runs";
        return "";
    }
    return "no CPU ISA";
}

// Shapes whose rows are whole 64-byte lines in float32 and bfloat16 (NCHW: H*W a multiple of
// 32; NHWC: C a multiple of 32), with odd batch, channel and spatial sizes around them, and
// one plane longer than the kernels' row chunk (16384), whose last chunk is shifted inwards.
std::vector<Shape> line_aligned_shapes(const std::string &layout) {
    if (layout == "nhwc") return {{2, 32, 3, 5}, {3, 64, 4, 4}, {1, 96, 7, 7}};
    return {{2, 3, 4, 8}, {3, 20, 8, 8}, {2, 7, 16, 12}, {1, 3, 128, 160}};
}

std::vector<Variant> streaming_variants() {
    std::vector<Variant> v;
    for (DType t : {DType::float32, DType::bfloat16})
        for (const char *l : {"nchw", "nhwc"}) v.push_back({l, l, t});
    return v;
}

class Streaming : public ::testing::TestWithParam<Variant> {};

TEST_P(Streaming, MatchesFloat64Reference) {
    if (const std::string why = not_built(GetParam()); !why.empty()) GTEST_SKIP() << why;
    StreamingMode always(StreamingStores::always);
    check_against_reference(GetParam(), line_aligned_shapes(GetParam().x_layout), Device::CPU);
}

// What each op wrote, and whether its (last) kernel streamed.
struct Op {
    bool streamed;
    std::vector<std::vector<double>> tensors;
};

// Training and eval forward (plain, and residual + ReLU) and backward with grad_input (with and
// without the parameter gradients; after a residual forward, backward_add, which also writes
// the residual's gradient), on a fresh module with the parameters of `seed`; every output
// poisoned before its op.
std::vector<Op> run_ops(const Variant &var, const Shape &s, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Op> ops;
    for (Activation act : {Activation::none, Activation::relu}) {
        Options o;
        o.activation = act;
        ModuleAndReference m(var, s, o, rng, Device::CPU);
        TypedTensor x(var.dtype, s, var.x_layout), z(var.dtype, s, var.x_layout);
        TypedTensor y(var.dtype, s, var.y_layout), dy(var.dtype, s, var.y_layout);
        TypedTensor dx(var.dtype, s, var.y_layout), dz(var.dtype, s, var.y_layout);
        x.randomize(rng, 1.0, 2.0);
        z.randomize(rng);
        dy.randomize(rng);
        for (bool training : {true, false}) {
            m.bn.train(training);
            const bool add = act == Activation::relu;
            y.poison();
            add ? m.bn.forward_add(x.view(), z.view(), y.view()) : m.bn.forward(x.view(), y.view());
            ops.push_back({last_call_streamed(), {y.values()}});
            for (const BackwardMask &mask : {BackwardMask{true, true}, BackwardMask{true, false}}) {
                dx.poison();
                dz.poison();
                m.bn.zero_grad();
                if (add)
                    m.bn.backward_add(dy.view(), dx.view(), dz.view(), mask);
                else
                    m.bn.backward(dy.view(), dx.view(), mask);
                ops.push_back({last_call_streamed(), {dx.values()}});
                if (add) ops.back().tensors.push_back(dz.values());
            }
        }
    }
    return ops;
}

int64_t unwritten(const std::vector<double> &v) {
    return std::count_if(v.begin(), v.end(), [](double x) { return std::isnan(x); });
}

// Streamed where the rows are lines, bit for bit what the ordinary kernels write, every element.
TEST_P(Streaming, RunsWhenLineAlignedAndMatchesOrdinaryStoresBitForBit) {
    const Variant &var = GetParam();
    if (const std::string why = not_built(var); !why.empty()) GTEST_SKIP() << why;
    for (const Shape &s : line_aligned_shapes(var.x_layout)) {
        SCOPED_TRACE(s.name());
        std::vector<Op> ordinary, streamed;
        {
            StreamingMode never(StreamingStores::never);
            ordinary = run_ops(var, s, 7);
        }
        {
            StreamingMode always(StreamingStores::always);
            streamed = run_ops(var, s, 7);
        }
        ASSERT_EQ(ordinary.size(), streamed.size());
        for (size_t i = 0; i < streamed.size(); ++i) {
            SCOPED_TRACE("op " + std::to_string(i));
            EXPECT_FALSE(ordinary[i].streamed);
            EXPECT_TRUE(streamed[i].streamed);
            ASSERT_EQ(ordinary[i].tensors.size(), streamed[i].tensors.size());
            for (size_t t = 0; t < streamed[i].tensors.size(); ++t) {
                const std::vector<double> &a = streamed[i].tensors[t], &b = ordinary[i].tensors[t];
                EXPECT_EQ(unwritten(a), 0) << "output " << t;
                EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(double)), 0)
                    << "output " << t;
            }
        }
    }
}

// Rows that are not whole lines take the ordinary kernels, even when forced.
TEST_P(Streaming, OtherShapesTakeTheOrdinaryKernels) {
    const Variant &var = GetParam();
    if (const std::string why = not_built(var); !why.empty()) GTEST_SKIP() << why;
    const Shape s = var.x_layout == "nhwc" ? Shape{2, 24, 4, 4} : Shape{2, 3, 5, 5};
    StreamingMode always(StreamingStores::always);
    const std::vector<Op> ops = run_ops(var, s, 11);
    for (size_t i = 0; i < ops.size(); ++i) {
        EXPECT_FALSE(ops[i].streamed) << "op " << i;
        for (const std::vector<double> &t : ops[i].tensors)
            EXPECT_EQ(unwritten(t), 0) << "op " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(All, Streaming, ::testing::ValuesIn(streaming_variants()),
                         [](const auto &info) { return info.param.name(); });

// Data one float past a line: the ordinary kernel, the same values.
TEST(StreamingStores, MisalignedDataTakesTheOrdinaryKernel) {
    if (const std::string why = not_built({"nchw", "nchw", DType::float32}); !why.empty())
        GTEST_SKIP() << why;
    const Shape s{2, 4, 8, 8};
    std::mt19937 rng(3);
    std::vector<float> x = random_vector(rng, s.numel() + 16), y(s.numel() + 16), y2(s.numel());
    BatchNorm2d bn(s.c);
    bn.eval();
    StreamingMode always(StreamingStores::always);
    bn.forward(Tensor::nchw(x.data(), s.n, s.c, s.h, s.w),
               Tensor::nchw(y2.data(), s.n, s.c, s.h, s.w));
    float *aligned =
        reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(y.data()) + 63) & ~uintptr_t(63));
    ASSERT_LE(aligned + 1 + s.numel(), y.data() + y.size());
    bn.forward(Tensor::nchw(x.data(), s.n, s.c, s.h, s.w),
               Tensor::nchw(aligned + 1, s.n, s.c, s.h, s.w));
    EXPECT_FALSE(last_call_streamed());
    EXPECT_EQ(std::memcmp(aligned + 1, y2.data(), y2.size() * sizeof(float)), 0);
}

// automatic: small tensors keep ordinary stores; tensors past the last-level cache stream.
TEST(StreamingStores, AutomaticStreamsPastTheLastLevelCache) {
    if (const std::string why = not_built({"nchw", "nchw", DType::float32}); !why.empty())
        GTEST_SKIP() << why;
    StreamingMode automatic(StreamingStores::automatic);
    BatchNorm2d bn(16);
    bn.eval();
    std::mt19937 rng(5);
    auto run = [&](int64_t n, int64_t hw) {
        TypedTensor x(DType::float32, Shape{n, 16, 1, hw}, "nchw"),
            y(DType::float32, Shape{n, 16, 1, hw}, "nchw");
        x.randomize(rng);
        bn.forward(x.view(), y.view());
        return last_call_streamed();
    };
    EXPECT_FALSE(run(2, 64));
    // x and y together twice the cache (at most 1 GiB here; a larger cache is not tested).
    const int64_t per_item = 16 * 4096 * 4;
    const int64_t items = streaming_threshold_bytes() / per_item + 1;
    if (items * per_item * 2 > (int64_t(1) << 30)) GTEST_SKIP() << "last-level cache too large";
    EXPECT_TRUE(run(items, 4096));
}

TEST(StreamingStores, SettingRoundTripsAndRejectsUnknownModes) {
    StreamingMode keep(streaming_stores());
    for (StreamingStores m :
         {StreamingStores::never, StreamingStores::always, StreamingStores::automatic}) {
        set_streaming_stores(m);
        EXPECT_EQ(streaming_stores(), m);
    }
    EXPECT_THROW(set_streaming_stores(static_cast<StreamingStores>(7)), Error);
    EXPECT_GT(streaming_threshold_bytes(), 0);
}

}  // namespace
}  // namespace bn2d::test
