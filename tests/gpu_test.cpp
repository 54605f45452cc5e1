// The GPU kernels (built twice: OpenCL, run on PoCL in every CI run, and CUDA, skipped with the
// reason when no NVIDIA GPU is present) against the float64 reference, for every op and option:
// training forward steps, eval, backward with each mask in both modes; module state on the
// device. Inputs and outputs live in DeviceBuffers (upload, run, download).
//
// Tolerances are the CPU ones (forward 1e-5 abs + rel; gradients scaled by the largest value
// and by sqrt(N*H*W) for the parameter sums): GPU kernels accumulate in float32, but in a tree
// of per-thread and per-block partial sums whose rounding error grows like log of the count.
#include <set>
#include <tuple>

#include "common.h"
#include "layout_dtype_check.h"
#include "relu_check.h"

#ifndef BN2D_TEST_DEVICE
#error "define BN2D_TEST_DEVICE as OpenCL or Cuda"
#endif

namespace bn2d::test {
namespace {

constexpr Device kDevice = Device::BN2D_TEST_DEVICE;

#define SKIP_WITHOUT_DEVICE()                                                                      \
    if (!device_available(kDevice))                                                                \
    GTEST_SKIP() << device_name(kDevice) << " not available: " << device_unavailable_reason(kDevice)

// Parameter gradients live on the device (weight_grad() is a device view); read them through
// the host by moving the module there and back. to() forgets the last forward (its input is
// on the old device), so callers run the forward again after this.
struct Grads {
    std::vector<float> weight, bias;
};
Grads read_grads(BatchNorm2d &bn) {
    bn.to(Device::CPU);
    Grads g{to_vector(bn.weight_grad()), to_vector(bn.bias_grad())};
    bn.to(kDevice);
    return g;
}

using Param = std::tuple<Shape, bool, bool, bool>;  // shape, affine, track, momentum none

class Gpu : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override { SKIP_WITHOUT_DEVICE(); }
};

TEST_P(Gpu, AllOpsMatchReference) {
    const auto [s, affine, track, cumulative] = GetParam();
    std::mt19937 rng(std::hash<std::string>()(name(s)) + affine + 2 * track + 4 * cumulative);
    const std::optional<double> momentum = cumulative ? std::nullopt : std::optional<double>(0.1);
    BatchNorm2d bn(s.c, 1e-5, momentum, affine, track);
    reference::Module ref = reference_like(bn);
    randomize_parameters(rng, bn, ref);  // on the host, then moved with the module
    bn.to(kDevice);
    ASSERT_EQ(bn.device(), kDevice);
    const std::vector<int64_t> sizes = {s.n, s.c, s.h, s.w};
    DeviceBuffer d_x(kDevice, sizes), d_y(kDevice, sizes), d_dy(kDevice, sizes),
        d_dx(kDevice, sizes);
    auto at = [&](int64_t i) { return where(s, i); };

    auto check_state = [&] {
        const StateDict st = bn.state_dict();
        EXPECT_EQ(st.num_batches_tracked, ref.num_batches_tracked);
        if (affine) {  // parameters never change in forward/backward
            EXPECT_TRUE(all_close(st.weight, ref.weight, 0, 0));
            EXPECT_TRUE(all_close(st.bias, ref.bias, 0, 0));
        } else {
            EXPECT_TRUE(st.weight.empty());
        }
        if (track) {
            EXPECT_TRUE(all_close(st.running_mean, ref.running_mean, 1e-6, 1e-5));
            EXPECT_TRUE(all_close(st.running_var, ref.running_var, 1e-6, 1e-5));
        } else {
            EXPECT_TRUE(st.running_mean.empty());
        }
    };
    auto forward = [&](const std::vector<float> &x, const char *what) {
        d_x.upload(x);
        d_y.upload(poisoned(s.numel()));
        bn.forward(d_x.view(), d_y.view());
        const std::vector<double> want = ref.forward(s, x);
        EXPECT_TRUE(all_close(d_y.download(), want, 1e-5, 1e-5,
                              [&](int64_t i) { return std::string(what) + " " + where(s, i); }));
        check_state();
    };

    std::vector<float> x;
    for (int step = 1; step <= 2; ++step) {
        SCOPED_TRACE("training step " + std::to_string(step));
        x = random_vector(rng, s.numel(), 0.5f * step, 1.0f + step);
        forward(x, "training");
    }

    for (bool training : {true, false}) {
        SCOPED_TRACE(training ? "training backward" : "eval backward");
        if (!training) {
            bn.eval();
            ref.training = false;
            x = random_vector(rng, s.numel(), -0.5f, 2.0f);
            forward(x, "eval");
        }
        const std::vector<float> dy = random_vector(rng, s.numel());
        d_dy.upload(dy);
        const auto want = ref.backward(s, x, dy);
        const double atol_in = input_grad_atol(want.input);
        const double atol_p = param_grad_atol(s);
        for (BackwardMask mask : all_masks()) {
            SCOPED_TRACE(mask_name(mask));
            bn.zero_grad();
            d_dx.upload(poisoned(s.numel()));
            bn.backward(d_dy.view(), mask.input ? d_dx.view() : Tensor(), mask);
            const std::vector<float> dx = d_dx.download();
            if (mask.input) {
                EXPECT_TRUE(all_close(dx, want.input, atol_in, 1e-5, at));
            } else {
                EXPECT_TRUE(std::all_of(dx.begin(), dx.end(), [](float v) {
                    return std::isnan(v);
                })) << "grad_input written although not requested";
            }
            if (!affine) {
                EXPECT_FALSE(bn.weight_grad().defined());
                continue;  // no to() round trip: the forward is still the last one
            }
            const Grads g = read_grads(bn);
            if (mask.params) {
                EXPECT_TRUE(all_close(g.weight, want.weight, atol_p, 1e-5));
                EXPECT_TRUE(all_close(g.bias, want.bias, atol_p, 1e-5));
            } else {
                EXPECT_EQ(g.weight, std::vector<float>(s.c, 0.0f));
                EXPECT_EQ(g.bias, std::vector<float>(s.c, 0.0f));
            }
            forward(x, "forward again after to()");  // same x: same saved statistics
        }
    }
}

std::string param_name(const ::testing::TestParamInfo<Param> &info) {
    const auto [shape, affine, track, cumulative] = info.param;
    return name(shape) + (affine ? "_affine" : "_plain") + (track ? "_track" : "_notrack") +
           (cumulative ? "_cumulative" : "_momentum");
}

// C = 5 with W = 37 (not a multiple of the 32-wide tiles), C = 3 with H*W = 3072 (more than one
// reduction block per row), H = W = 1, and C = 70 (more than one 64-channel tile).
INSTANTIATE_TEST_SUITE_P(Grid, Gpu,
                         ::testing::Combine(::testing::ValuesIn(problems::load("gpu")),
                                            ::testing::Bool(), ::testing::Bool(),
                                            ::testing::Bool()),
                         param_name);

// The GPU kernels accumulate in float32: the shifted sums must still give the variance of data
// whose mean is 1e4 times its spread (naive E[x^2] - E[x]^2 in float32 returns garbage here).
TEST(GpuDevice, VarianceOfLargeMeanSmallSpreadIsAccurate) {
    SKIP_WITHOUT_DEVICE();
    const Shape s{8, 4, 64, 64};
    std::mt19937 rng(61);
    std::vector<float> x = random_vector(rng, s.numel(), 1e4f, 1.0f);
    BatchNorm2d bn(s.c, 1e-5, 1.0);  // momentum 1: running_var = unbiased batch variance
    bn.to(kDevice);
    DeviceBuffer d_x(kDevice, {s.n, s.c, s.h, s.w}), d_y(kDevice, {s.n, s.c, s.h, s.w});
    d_x.upload(x);
    bn.forward(d_x.view(), d_y.view());
    const StateDict st = bn.state_dict();
    const reference::Stats want = reference::batch_stats(s, x);
    const double m = double(s.per_channel());
    for (int64_t c = 0; c < s.c; ++c) {
        const double var = want.var[c] * m / (m - 1);
        EXPECT_LT(std::abs(st.running_var[c] - var) / var, 1e-4)
            << "channel " << c << ": " << st.running_var[c] << " vs " << var;
        EXPECT_LE(std::abs(st.running_mean[c] - want.mean[c]), 1e-3) << "channel " << c;
    }
}

// The kernels shift each channel by its first sample; a first sample far from the mean (a hot
// pixel 1000 std away) brings the E[(x-K)^2] - E[x-K]^2 cancellation back unless the sums are
// wide enough. With float32 sums this measured 5e-4 to 3e-2 relative error on OpenCL (PoCL),
// 1x1x1xM, M = 4096 to 1M; the kernels now accumulate in float64 on GPUs too.
TEST(GpuDevice, OutlierFirstSampleKeepsVarianceAccurate) {
    SKIP_WITHOUT_DEVICE();
    for (int64_t M : {4096, 65536}) {
        SCOPED_TRACE("M = " + std::to_string(M));
        const Shape s{1, 1, 1, M};
        std::mt19937 rng(63);
        std::vector<float> x = random_vector(rng, s.numel());
        x[0] = 1000.0f;
        BatchNorm2d bn(1, 1e-5, 1.0);
        bn.to(kDevice);
        DeviceBuffer d_x(kDevice, {1, 1, 1, M}), d_y(kDevice, {1, 1, 1, M});
        d_x.upload(x);
        bn.forward(d_x.view(), d_y.view());
        const double var = reference::batch_stats(s, x).var[0] * M / (M - 1);
        const float got = bn.state_dict().running_var[0];
        EXPECT_LT(std::abs(got - var) / var, 1e-4) << got << " vs " << var;
    }
}

// NaN and Inf propagate on the device as on the CPU (where they match libtorch:
// torch_parity_test.cpp): a NaN, a +Inf, a -Inf, both infinities, and non-finite first samples.
TEST(GpuDevice, NanAndInfPropagateLikeTheCpu) {
    SKIP_WITHOUT_DEVICE();
    const Shape s{2, 7, 3, 4};
    std::mt19937 rng(92);
    const std::vector<float> x = non_finite_input(rng, s);
    const std::vector<float> dy = random_vector(rng, s.numel());
    const std::vector<int64_t> sizes = {s.n, s.c, s.h, s.w};
    BatchNorm2d cpu(s.c), dev(s.c);
    dev.to(kDevice);
    DeviceBuffer d_x(kDevice, sizes), d_y(kDevice, sizes), d_dy(kDevice, sizes),
        d_dx(kDevice, sizes);
    d_x.upload(x);
    d_dy.upload(dy);
    for (bool training : {true, false}) {
        SCOPED_TRACE(training ? "training" : "eval");
        cpu.train(training);
        dev.train(training);
        std::vector<float> y = poisoned(s.numel()), dx = poisoned(s.numel());
        std::vector<float> xs = x, dys = dy;
        cpu.forward(view(xs, s), view(y, s));
        cpu.backward(view(dys, s), view(dx, s));
        d_y.upload(poisoned(s.numel()));
        d_dx.upload(poisoned(s.numel()));
        dev.forward(d_x.view(), d_y.view());
        dev.backward(d_dy.view(), d_dx.view());
        EXPECT_TRUE(same_with_non_finite(to_f64(d_y.download()), to_f64(y), 1e-5, 1e-5)) << "y";
        EXPECT_TRUE(same_with_non_finite(to_f64(d_dx.download()), to_f64(dx), 1e-5, 1e-5)) << "dx";
        EXPECT_TRUE(same_with_non_finite(dev.state_dict().running_var, cpu.state_dict().running_var,
                                         1e-6, 1e-5));
        EXPECT_TRUE(same_with_non_finite(dev.state_dict().running_mean,
                                         cpu.state_dict().running_mean, 1e-6, 1e-5));
    }
}

TEST(GpuDevice, ZeroCopyViewsOfModuleState) {
    SKIP_WITHOUT_DEVICE();
    BatchNorm2d bn(4);
    bn.to(kDevice);
    EXPECT_EQ(bn.weight().device(), kDevice);
    EXPECT_NE(bn.weight().device_handle(), 0u);
    EXPECT_EQ(bn.state_dict().weight, std::vector<double>(4, 1.0));
    bn.to(Device::CPU);
    EXPECT_EQ(bn.weight().device(), Device::CPU);
}

// A random float32 state of C channels (running_var near 2), num_batches_tracked `count`.
StateDict random_state(std::mt19937 &rng, int64_t C, int64_t count) {
    StateDict d;
    d.weight = to_f64(random_vector(rng, C));
    d.bias = to_f64(random_vector(rng, C));
    d.running_mean = to_f64(random_vector(rng, C));
    d.running_var = to_f64(random_vector(rng, C, 2.0f, 0.1f));
    d.num_batches_tracked = count;
    return d;
}

// State moves with the module both ways, bitwise, and load_state_dict / reset work on device.
TEST(GpuDevice, StateSurvivesMovesAndLoads) {
    SKIP_WITHOUT_DEVICE();
    BatchNorm2d bn(6);
    std::mt19937 rng(62);
    StateDict d = random_state(rng, 6, 7);
    bn.load_state_dict(d);
    bn.to(kDevice);
    EXPECT_EQ(bn.state_dict().running_var, d.running_var);
    EXPECT_EQ(bn.state_dict().num_batches_tracked, 7);
    d.bias = to_f64(random_vector(rng, 6));
    bn.load_state_dict(d);  // on the device
    EXPECT_EQ(bn.state_dict().bias, d.bias);
    bn.to(Device::CPU);
    EXPECT_EQ(bn.state_dict().bias, d.bias);
    EXPECT_EQ(bn.state_dict().weight, d.weight);
    bn.to(kDevice);
    bn.reset_running_stats();
    EXPECT_EQ(bn.state_dict().running_var, std::vector<double>(6, 1.0));
    EXPECT_EQ(bn.state_dict().weight, d.weight);
    bn.reset_parameters();
    EXPECT_EQ(bn.state_dict().weight, std::vector<double>(6, 1.0));
}

// A module on the device saves and loads checkpoints and folds into a convolution exactly as
// one on the CPU (its state is read and written through the host).
TEST(GpuDevice, CheckpointAndFoldFromTheDevice) {
    SKIP_WITHOUT_DEVICE();
    std::mt19937 rng(std::random_device{}());
    BatchNorm2d dev(5), cpu(5), loaded(5);
    const StateDict d = random_state(rng, 5, 11);
    dev.load_state_dict(d);
    dev.to(kDevice);
    const std::string file = ::testing::TempDir() + "bn2d_gpu_checkpoint.safetensors";
    save_safetensors(dev, file, "bn.");
    load_safetensors(cpu, file, "bn.");
    EXPECT_EQ(cpu.state_dict().running_var, d.running_var);
    EXPECT_EQ(cpu.state_dict().num_batches_tracked, 11);
    loaded.to(kDevice);
    load_safetensors(loaded, file, "bn.");
    EXPECT_EQ(loaded.state_dict().weight, d.weight);
    std::remove(file.c_str());

    dev.eval();
    cpu.eval();
    std::vector<float> w_dev = random_vector(rng, 5 * 4 * 9), b_dev = random_vector(rng, 5);
    std::vector<float> w_cpu = w_dev, b_cpu = b_dev;
    fold_into_conv(dev, Tensor(w_dev.data(), {5, 4, 3, 3}), Tensor(b_dev.data(), {5}));
    fold_into_conv(cpu, Tensor(w_cpu.data(), {5, 4, 3, 3}), Tensor(b_cpu.data(), {5}));
    EXPECT_EQ(w_dev, w_cpu);
    EXPECT_EQ(b_dev, b_cpu);
}

// Host tensors are rejected by a module on the device, with the reason.
TEST(GpuDevice, HostTensorOnDeviceModule) {
    SKIP_WITHOUT_DEVICE();
    BatchNorm2d bn(3);
    bn.to(kDevice);
    std::vector<float> x(24, 1.0f), y(24);
    try {
        bn.forward(Tensor::nchw(x.data(), 2, 3, 2, 2), Tensor::nchw(y.data(), 2, 3, 2, 2));
        ADD_FAILURE() << "no exception";
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("is on cpu but the module is on"), std::string::npos)
            << e.what();
    }
    EXPECT_EQ(bn.num_batches_tracked(), 0);
}

}  // namespace
}  // namespace bn2d::test

namespace bn2d::test {
namespace {

// Every layout x dtype the CPU tests cover (tests/layouts_dtypes_test.cpp), on the device:
// NCHW, NHWC, padded rows and mixed layouts (the strided kernels); negative strides are
// CPU-only. Names carry layout and dtype (ctest -R nhwc, -R bf16).
class GpuLayoutDtype : public ::testing::TestWithParam<Variant> {
protected:
    void SetUp() override { SKIP_WITHOUT_DEVICE(); }
};

// Why the device cannot run `dtype` ("" if it can): float16 on an OpenCL device without
// cl_khr_fp16 (PoCL on the CPU) is a clean error saying so; a dtype may not be built.
std::string dtype_unsupported_reason(DType dtype) {
    if (std::string why = dtype_not_built(dtype); !why.empty()) return why;
    const Shape s{1, 1, 1, 2};
    TypedTensor x(dtype, s, "nchw"), y(dtype, s, "nchw");
    std::mt19937 rng(1);
    x.randomize(rng);
    Options o;
    o.dtype = dtype == DType::float64 ? DType::float64 : DType::float32;
    BatchNorm2d bn(1, o);
    bn.to(kDevice);
    OnDevice dx(x, kDevice), dy(y, kDevice);
    try {
        bn.forward(dx.view(), dy.view());
    } catch (const Error &e) {
        const std::string msg = e.what();
        if (msg.find("cl_khr_fp16") != std::string::npos) return msg.substr(0, msg.find('\n'));
        throw;
    }
    return "";
}

TEST_P(GpuLayoutDtype, MatchesFloat64Reference) {
    const std::string reason = dtype_unsupported_reason(GetParam().dtype);
    if (!reason.empty()) GTEST_SKIP() << reason;
    check_against_reference(GetParam(), problems::load("gpu"), kDevice);
}

std::vector<Variant> gpu_variants() {
    std::vector<Variant> v;
    for (DType t : {DType::float32, DType::bfloat16, DType::float16, DType::float64}) {
        for (const char *l : {"nchw", "nhwc", "padded"}) v.push_back({l, l, t});
        v.push_back({"nchw", "nhwc", t});
    }
    return v;
}

INSTANTIATE_TEST_SUITE_P(All, GpuLayoutDtype, ::testing::ValuesIn(gpu_variants()),
                         [](const ::testing::TestParamInfo<Variant> &i) { return i.param.name(); });

// Fused batchnorm + ReLU and + add + ReLU with the GPU schedules (ctest -R relu).
class relu_fused_gpu : public GpuLayoutDtype {};

TEST_P(relu_fused_gpu, MatchesFloat64Reference) {
    const std::string reason = dtype_unsupported_reason(GetParam().dtype);
    if (!reason.empty()) GTEST_SKIP() << reason;
    check_fused_against_reference(GetParam(), fused_shapes(), kDevice);
}

INSTANTIATE_TEST_SUITE_P(All, relu_fused_gpu, ::testing::ValuesIn(gpu_variants()),
                         [](const ::testing::TestParamInfo<Variant> &i) { return i.param.name(); });

// Every kernel of the variant table is reached on this backend, and BN2D_VERBOSE names it
// (float16 only where the device runs it).
TEST(GpuVariants, VerboseNamesEveryKernelOfTheTable) {
    SKIP_WITHOUT_DEVICE();
    std::set<std::string> reached, skipped_dtypes;
    for (DType dtype : {DType::float32, DType::bfloat16, DType::float16, DType::float64}) {
        if (!dtype_unsupported_reason(dtype).empty()) {
            skipped_dtypes.insert(std::string("_") + dtype_short_name(dtype) + "_");
            continue;
        }
        for (const std::string layout : {"nchw", "nhwc", "padded"}) {
            // Every op of BatchNorm2d, then SyncBatchNorm2d's (a group of one process).
            for (bool sync : {false, true}) {
                const std::vector<std::string> lines =
                    verbose_lines_of_every_op(kDevice, dtype, layout, sync);
                ASSERT_EQ(lines.size(), sync ? 5u : 12u);
                for (const std::string &line : lines) {
                    const std::vector<std::string> f = split(line, ',');
                    ASSERT_EQ(f.size(), 9u) << line;
                    EXPECT_EQ(f[4].substr(0, f[4].find(':')), device_name(kDevice)) << line;
                    reached.insert(f[3]);
                }
            }
        }
    }
    const std::vector<std::string> &cpu_only = build_info().cpu_only_kernels;
    for (const std::string &k : build_info().kernels) {
        bool skipped = std::find(cpu_only.begin(), cpu_only.end(), k) != cpu_only.end();
        for (const std::string &d : skipped_dtypes)
            skipped = skipped || k.find(d) != std::string::npos;
        if (!skipped)
            EXPECT_TRUE(reached.count(k))
                << "kernel " << k << " is never dispatched on " << device_name(kDevice);
    }
}

}  // namespace
}  // namespace bn2d::test
