// The GPU kernels (built twice: OpenCL, run on PoCL in every CI run, and CUDA, skipped with the
// reason when no NVIDIA GPU is present) against the float64 reference, for every op and option:
// training forward steps, eval, backward with each mask; module state on the device.
#include <tuple>

#include "common.h"

#ifndef BN2D_TEST_DEVICE
#error "define BN2D_TEST_DEVICE as OpenCL or Cuda"
#endif

namespace bn2d::test {
namespace {

constexpr Device kDevice = Device::BN2D_TEST_DEVICE;

using Param = std::tuple<Shape, bool, bool, bool>;  // shape, affine, track, momentum none

class Gpu : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override {
        if (!device_available(kDevice))
            GTEST_SKIP() << device_name(kDevice) << " not available: "
                         << device_unavailable_reason(kDevice);
    }
};

TEST_P(Gpu, AllOpsMatchReference) {
    const auto [s, affine, track, cumulative] = GetParam();
    std::mt19937 rng(std::hash<std::string>()(name(s)) + affine + 2 * track + 4 * cumulative);
    const std::optional<double> momentum = cumulative ? std::nullopt : std::optional<double>(0.1);
    BatchNorm2d bn(s.c, 1e-5, momentum, affine, track);
    reference::Module ref(s.c);
    ref.momentum = momentum;
    ref.affine = affine;
    ref.track = track;
    randomize_parameters(rng, bn, ref);  // on the host, then moved with the module
    bn.to(kDevice);
    ASSERT_EQ(bn.device(), kDevice);
    const std::vector<int64_t> sizes = {s.n, s.c, s.h, s.w};
    DeviceBuffer dx_in(kDevice, sizes), dy_out(kDevice, sizes), ddy(kDevice, sizes), ddx(kDevice, sizes);
    auto where_s = [&](int64_t i) { return where(s, i); };

    std::vector<float> x;
    for (int step = 1; step <= 2; ++step) {
        SCOPED_TRACE("training step " + std::to_string(step));
        x = random_vector(rng, s.numel(), 0.5f * step, 1.0f + step);
        dx_in.upload(x);
        dy_out.upload(poisoned(s.numel()));
        bn.forward(dx_in.view(), dy_out.view());
        EXPECT_TRUE(all_close(dy_out.download(), ref.forward(s, x), 1e-5, 1e-5, where_s));
        StateDict st = bn.state_dict();
        EXPECT_EQ(st.num_batches_tracked, ref.num_batches_tracked);
        if (track) {
            EXPECT_TRUE(all_close(st.running_mean, ref.running_mean, 1e-6, 1e-5));
            EXPECT_TRUE(all_close(st.running_var, ref.running_var, 1e-6, 1e-5));
        }
    }
    std::vector<float> dy = random_vector(rng, s.numel());
    ddy.upload(dy);
    auto want = ref.backward(s, x, dy);
    for (BackwardMask mask : {BackwardMask{true, true}, BackwardMask{true, false}, BackwardMask{false, true}}) {
        SCOPED_TRACE(std::string("mask ") + (mask.input ? "input " : "") + (mask.params ? "params" : ""));
        bn.zero_grad();
        ddx.upload(poisoned(s.numel()));
        bn.backward(ddy.view(), mask.input ? ddx.view() : Tensor(), mask);
        if (mask.input) EXPECT_TRUE(all_close(ddx.download(), want.input, 1e-4, 1e-5, where_s));
        if (affine && mask.params) {
            BatchNorm2d &m = bn;
            m.to(Device::CPU);  // read gradients through the host (a transfer helper)
            const double atol = 2e-6 * (1 + std::sqrt(double(s.per_channel())));
            EXPECT_TRUE(all_close(to_vector(m.weight_grad()), want.weight, atol, 1e-4));
            EXPECT_TRUE(all_close(to_vector(m.bias_grad()), want.bias, atol, 1e-4));
            m.to(kDevice);
            // to() forgets the saved forward input: run the forward again for the next mask.
            bn.forward(dx_in.view(), dy_out.view());
            ref.forward(s, x);
        }
    }
    bn.eval();
    ref.training = false;
    x = random_vector(rng, s.numel(), -0.5f, 2.0f);
    dx_in.upload(x);
    dy_out.upload(poisoned(s.numel()));
    bn.forward(dx_in.view(), dy_out.view());
    EXPECT_TRUE(all_close(dy_out.download(), ref.forward(s, x), 1e-5, 1e-5,
                          [&](int64_t i) { return "eval " + where(s, i); }));
    ddx.upload(poisoned(s.numel()));
    bn.backward(ddy.view(), ddx.view(), {true, false});
    EXPECT_TRUE(all_close(ddx.download(), ref.backward(s, x, dy).input, 1e-4, 1e-5, where_s));
}

std::string param_name(const ::testing::TestParamInfo<Param> &info) {
    const auto [shape, affine, track, cumulative] = info.param;
    return name(shape) + (affine ? "_affine" : "_plain") + (track ? "_track" : "_notrack") +
           (cumulative ? "_cumulative" : "_momentum");
}

INSTANTIATE_TEST_SUITE_P(Grid, Gpu,
                         ::testing::Combine(::testing::Values(Shape{3, 5, 7, 37}, Shape{2, 3, 48, 64},
                                                              Shape{4, 16, 1, 1}),
                                            ::testing::Bool(), ::testing::Bool(), ::testing::Bool()),
                         param_name);

TEST(GpuDevice, ZeroCopyViewsOfModuleState) {
    if (!device_available(kDevice))
        GTEST_SKIP() << device_name(kDevice) << " not available: " << device_unavailable_reason(kDevice);
    BatchNorm2d bn(4);
    bn.to(kDevice);
    EXPECT_EQ(bn.weight().device(), kDevice);
    EXPECT_NE(bn.weight().device_handle(), 0u);
    EXPECT_EQ(bn.state_dict().weight, std::vector<float>(4, 1.0f));
    bn.to(Device::CPU);
    EXPECT_EQ(bn.weight().device(), Device::CPU);
}

}  // namespace
}  // namespace bn2d::test
