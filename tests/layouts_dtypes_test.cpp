// Every layout x dtype against the float64 reference, over the grid shapes and options:
// training and eval forward, running statistics, backward with every output mask. Tensors live
// in poisoned memory: every element must be written and nothing around the view.
// Test names carry the layout and the dtype (ctest -R nhwc, ctest -R bf16).
#include <cmath>

#include "layout_dtype_check.h"

namespace bn2d::test {
namespace {

class LayoutDtype : public ::testing::TestWithParam<Variant> {};

TEST_P(LayoutDtype, MatchesFloat64Reference) {
    if (const std::string why = dtype_not_built(GetParam().dtype); !why.empty())
        GTEST_SKIP() << why;
    std::vector<Shape> shapes;
    for (const Shape &s : grid_shapes())  // float32 also covers the larger-than-L2 shape
        if (GetParam().dtype == DType::float32 || s.numel() <= 2000000) shapes.push_back(s);
    check_against_reference(GetParam(), shapes, Device::CPU);
}

INSTANTIATE_TEST_SUITE_P(All, LayoutDtype, ::testing::ValuesIn(all_variants()),
                         [](const ::testing::TestParamInfo<Variant> &i) { return i.param.name(); });

// The kernel each layout reaches, as BN2D_VERBOSE reports it (the fused strategy: one kernel
// per call; tests/variants_test.cpp has the split one's).
TEST(LayoutDispatch, EachLayoutRunsItsKernel) {
    StrategyGuard fused(CpuStrategy::fused);
    struct Case {
        std::string x, y, kernel_layout;
        int64_t channels = 20;
    };
    // channels_last with fewer than 16 channels (an RGB image) runs the strided kernels.
    for (const Case &c : {Case{"nchw", "nchw", "nchw"}, Case{"nhwc", "nhwc", "nhwc"},
                          Case{"padded", "padded", "strided"}, Case{"reversed", "reversed", "nhwc"},
                          Case{"nchw", "nhwc", "strided"}, Case{"padded", "nhwc", "strided"},
                          Case{"nhwc", "nhwc", "strided", 3}, Case{"nchw", "nchw", "nchw", 3}}) {
        SCOPED_TRACE(c.x + " -> " + c.y + ", C = " + std::to_string(c.channels));
        const Shape s{2, c.channels, 3, 5};
        std::mt19937 rng(5);
        TypedTensor x(DType::bfloat16, s, c.x), y(DType::bfloat16, s, c.y);
        x.randomize(rng);
        BatchNorm2d bn(s.c);
        set_verbose(true);
        ::testing::internal::CaptureStderr();
        bn.forward(x.view(), y.view());
        const std::string err = ::testing::internal::GetCapturedStderr();
        set_verbose(false);
        const std::vector<std::string> f = split(err.substr(0, err.find('\n')), ',');
        ASSERT_EQ(f.size(), 9u) << err;
        EXPECT_EQ(f[3], "train_fwd_bf16_" + c.kernel_layout);
        EXPECT_EQ(f[6], c.kernel_layout);
        EXPECT_EQ(f[7], "bf16");
    }
}

// An input broadcast along N (stride 0), as x.expand() gives in PyTorch: same result as the
// materialized tensor.
TEST(LayoutStrided, ZeroStrideInputMatchesMaterialized) {
    const Shape s{4, 3, 5, 7};
    std::mt19937 rng(9);
    std::vector<float> image = random_vector(rng, s.c * s.h * s.w, 1.0f, 2.0f);
    std::vector<float> dense(s.numel()), y1(s.numel()), y2 = poisoned(s.numel());
    for (int64_t n = 0; n < s.n; ++n)
        std::copy(image.begin(), image.end(), dense.begin() + n * image.size());
    BatchNorm2d a(s.c), b(s.c);
    a.forward(view(dense, s), view(y1, s));
    b.forward(Tensor(image.data(), {s.n, s.c, s.h, s.w}, {0, s.h * s.w, s.w, 1}), view(y2, s));
    EXPECT_TRUE(all_close(y2, y1, 0, 0));
    EXPECT_EQ(a.state_dict().running_var, b.state_dict().running_var);
}

// Outputs that would write two elements to one address are rejected, state unchanged.
TEST(LayoutStrided, SelfOverlappingOutputIsRejected) {
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(2);
    std::vector<float> x = random_vector(rng, s.numel()), y(s.numel());
    BatchNorm2d bn(s.c);
    const StateDict before = bn.state_dict();
    for (const std::vector<int64_t> &strides :
         {std::vector<int64_t>{0, 20, 5, 1}, std::vector<int64_t>{60, 20, 5, 2},
          std::vector<int64_t>{60, 20, 1, 1}}) {
        try {
            bn.forward(view(x, s), Tensor(y.data(), {s.n, s.c, s.h, s.w}, strides));
            ADD_FAILURE() << "accepted an output that overlaps itself";
        } catch (const Error &e) {
            EXPECT_NE(std::string(e.what()).find("overlap"), std::string::npos) << e.what();
        }
    }
    EXPECT_EQ(bn.state_dict().running_mean, before.running_mean);
    EXPECT_EQ(bn.num_batches_tracked(), 0);
}

// PyTorch's dtype rules: float32 parameters take float32, bfloat16 and float16 inputs; float64
// parameters only float64; the output and gradients have the input's dtype.
TEST(Dtypes, MismatchesAreClearErrors) {
    const Shape s{2, 3, 4, 5};
    auto expect_error = [](auto &&f, const std::string &needle) {
        try {
            f();
            ADD_FAILURE() << "no error; expected one mentioning " << needle;
        } catch (const Error &e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    TypedTensor x64(DType::float64, s, "nchw"), y64(DType::float64, s, "nchw");
    TypedTensor x32(DType::float32, s, "nchw"), y32(DType::float32, s, "nchw");
    TypedTensor xb(DType::bfloat16, s, "nchw"), yb(DType::bfloat16, s, "nchw");
    std::mt19937 rng(4);
    x64.randomize(rng);
    x32.randomize(rng);
    xb.randomize(rng);
    BatchNorm2d f32(s.c);
    expect_error([&] { f32.forward(x64.view(), y64.view()); }, "input is float64");
    expect_error([&] { f32.forward(x32.view(), yb.view()); },
                 "out is bfloat16 but input is float32");
    Options o;
    o.dtype = DType::float64;
    BatchNorm2d f64(s.c, o);
    expect_error([&] { f64.forward(x32.view(), y32.view()); }, "input is float32");
    expect_error([&] { f64.forward(xb.view(), yb.view()); }, "input is bfloat16");
    EXPECT_EQ(f32.num_batches_tracked(), 0);
    EXPECT_EQ(f64.num_batches_tracked(), 0);
    // Mixed precision is accepted; then backward wants gradients of the input's dtype.
    f32.forward(xb.view(), yb.view());
    expect_error([&] { f32.backward(y32.view(), x32.view()); }, "grad_out is float32");
}

// A module with bfloat16 parameters holds values PyTorch's bfloat16 tensors can hold.
TEST(Dtypes, Bfloat16ParametersStayRounded) {
    const Shape s{4, 3, 5, 6};
    Options o;
    o.dtype = DType::bfloat16;
    BatchNorm2d bn(s.c, o);
    EXPECT_NE(bn.to_string().find("dtype=bfloat16"), std::string::npos);
    std::mt19937 rng(8);
    TypedTensor x(DType::bfloat16, s, "nhwc"), y(DType::bfloat16, s, "nhwc");
    x.randomize(rng, 0.3, 1.7);
    for (int step = 0; step < 3; ++step) bn.forward(x.view(), y.view());
    TypedTensor dy(DType::bfloat16, s, "nhwc"), dx(DType::bfloat16, s, "nhwc");
    dy.randomize(rng);
    bn.backward(dy.view(), dx.view());
    const StateDict st = bn.state_dict();
    const std::vector<double> grads = to_vector_f64(bn.weight_grad());
    for (const std::vector<double> *v : {&st.running_mean, &st.running_var, &grads}) {
        for (double value : *v) {
            const float f = static_cast<float>(value);
            EXPECT_EQ(float_from_bfloat16(bfloat16_from_float(f)), f) << value;
        }
    }
    EXPECT_NE(st.running_var[0], 1.0);  // updated
}

}  // namespace
}  // namespace bn2d::test
