// Every error: a bn2d::Error whose message names the problem, and the module state exactly as
// it was (parameters, buffers, gradients, counters).
#include <gmock/gmock.h>

#include "common.h"

namespace bn2d::test {
namespace {

using ::testing::HasSubstr;

struct Snapshot {
    StateDict state;
    std::vector<float> weight_grad, bias_grad;
    bool training;
    bool operator==(const Snapshot &o) const {
        return state.weight == o.state.weight && state.bias == o.state.bias &&
               state.running_mean == o.state.running_mean &&
               state.running_var == o.state.running_var &&
               state.num_batches_tracked == o.state.num_batches_tracked &&
               weight_grad == o.weight_grad && bias_grad == o.bias_grad && training == o.training;
    }
};

Snapshot snapshot(const BatchNorm2d &bn) {
    return {bn.state_dict(), to_vector(bn.weight_grad()), to_vector(bn.bias_grad()),
            bn.is_training()};
}

// A module with non-trivial state: a training step and a backward already done.
class Errors : public ::testing::Test {
protected:
    Shape s{4, 3, 5, 6};
    std::mt19937 rng{31};
    BatchNorm2d bn{3};
    std::vector<float> x, y, dy, dx;

    void SetUp() override {
        x = random_vector(rng, s.numel(), 1.0f, 2.0f);
        y = poisoned(s.numel());
        dy = random_vector(rng, s.numel());
        dx = poisoned(s.numel());
        bn.forward(view(x, s), view(y, s));
        bn.backward(view(dy, s), view(dx, s));
        bn.forward(view(x, s), view(y, s));
    }

    // Runs f, expects an Error mentioning every one of `words`, and the state unchanged.
    template<typename F>
    void expect_error(F &&f, std::initializer_list<const char *> words) {
        const Snapshot before = snapshot(bn);
        try {
            f();
            ADD_FAILURE() << "no exception";
        } catch (const Error &e) {
            for (const char *w : words) EXPECT_THAT(e.what(), HasSubstr(w));
        }
        EXPECT_TRUE(snapshot(bn) == before) << "state changed by a failed call";
    }
};

TEST_F(Errors, RankNotFour) {
    expect_error([&] { bn.forward(Tensor(x.data(), {4, 3, 30}), Tensor(y.data(), {4, 3, 30})); },
                 {"input", "4-D", "3-D"});
}

TEST_F(Errors, ChannelsNotNumFeatures) {
    expect_error([&] { bn.forward(Tensor(x.data(), {4, 5, 3, 6}), Tensor(y.data(), {4, 5, 3, 6})); },
                 {"3 channels", "C = 5"});
}

TEST_F(Errors, OutWrongShape) {
    expect_error([&] { bn.forward(view(x, s), Tensor(y.data(), {4, 3, 6, 5})); },
                 {"out", "[4, 3, 6, 5]", "expected [4, 3, 5, 6]"});
}

TEST_F(Errors, NullData) {
    expect_error([&] { bn.forward(Tensor(nullptr, {4, 3, 5, 6}), view(y, s)); }, {"input", "null"});
    expect_error([&] { bn.forward(view(x, s), Tensor()); }, {"out", "null"});
}

TEST_F(Errors, OutOverlapsInput) {
    expect_error([&] { bn.forward(view(x, s), view(x, s)); }, {"overlaps", "in-place"});
}

TEST_F(Errors, InnermostStrideNotOne) {
    expect_error([&] {
        bn.forward(Tensor(x.data(), {2, 3, 5, 3}, {90, 30, 6, 2}), Tensor(y.data(), {2, 3, 5, 3}));
    }, {"innermost (W) stride must be 1"});
}

TEST_F(Errors, BadEps) {
    for (double eps : {-1e-5, std::nan(""), double(INFINITY)}) {
        SCOPED_TRACE(eps);
        EXPECT_THROW(
            {
                try {
                    BatchNorm2d b(3, eps);
                } catch (const Error &e) {
                    EXPECT_THAT(e.what(), HasSubstr("eps"));
                    throw;
                }
            },
            Error);
        expect_error([&] { bn.set_eps(eps); }, {"eps must be finite and >= 0"});
    }
    EXPECT_EQ(bn.eps(), 1e-5);
}

TEST_F(Errors, MomentumOutsideUnitInterval) {
    for (double m : {-0.1, 1.5, std::nan("")}) {
        SCOPED_TRACE(m);
        EXPECT_THROW(BatchNorm2d(3, 1e-5, m), Error);
        expect_error([&] { bn.set_momentum(m); }, {"momentum must be in [0, 1]"});
    }
    EXPECT_EQ(bn.momentum(), 0.1);
}

TEST_F(Errors, NumFeaturesNotPositive) {
    EXPECT_THROW(BatchNorm2d(0), Error);
    EXPECT_THROW(BatchNorm2d(-3), Error);
}

TEST_F(Errors, SingleValuePerChannelWhenTraining) {
    std::vector<float> one = random_vector(rng, 3), out = poisoned(3);
    expect_error([&] { bn.forward(Tensor(one.data(), {1, 3, 1, 1}), Tensor(out.data(), {1, 3, 1, 1})); },
                 {"expected more than 1 value per channel when training"});
    // Eval with tracked statistics is fine, as in PyTorch.
    bn.eval();
    EXPECT_NO_THROW(bn.forward(Tensor(one.data(), {1, 3, 1, 1}), Tensor(out.data(), {1, 3, 1, 1})));
    // Without tracked statistics eval uses batch statistics, so it is an error again.
    BatchNorm2d untracked(3, 1e-5, 0.1, true, false);
    untracked.eval();
    EXPECT_THROW(untracked.forward(Tensor(one.data(), {1, 3, 1, 1}), Tensor(out.data(), {1, 3, 1, 1})),
                 Error);
}

TEST_F(Errors, BackwardBeforeForward) {
    BatchNorm2d fresh(3);
    EXPECT_THROW(
        {
            try {
                fresh.backward(view(dy, s), view(dx, s));
            } catch (const Error &e) {
                EXPECT_THAT(e.what(), HasSubstr("needs a forward() first"));
                throw;
            }
        },
        Error);
}

TEST_F(Errors, BackwardShapeDiffersFromForward) {
    std::vector<float> dy2 = random_vector(rng, 2 * 3 * 5 * 6), dx2 = poisoned(2 * 3 * 5 * 6);
    expect_error([&] { bn.backward(Tensor(dy2.data(), {2, 3, 5, 6}), Tensor(dx2.data(), {2, 3, 5, 6})); },
                 {"grad_out", "[2, 3, 5, 6]", "expected [4, 3, 5, 6]"});
}

TEST_F(Errors, TrainingBackwardAfterEvalForward) {
    bn.eval();
    bn.forward(view(x, s), view(y, s));
    bn.train();
    expect_error([&] { bn.backward(view(dy, s), view(dx, s)); },
                 {"training-mode backward with no training forward"});
}

TEST_F(Errors, GradInputRequestedButUndefined) {
    expect_error([&] { bn.backward(view(dy, s), Tensor(), BackwardMask{true, true}); },
                 {"grad_input", "null"});
}

TEST_F(Errors, LoadStateDictWrongSizes) {
    StateDict bad = bn.state_dict();
    bad.running_var.pop_back();
    expect_error([&] { bn.load_state_dict(bad); }, {"running_var", "2 values, expected 3"});
    bad = bn.state_dict();
    bad.num_batches_tracked = -1;
    expect_error([&] { bn.load_state_dict(bad); }, {"num_batches_tracked"});
}

TEST_F(Errors, IsaTheCpuLacks) {
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (cpu_supports(isa)) continue;
        EXPECT_THROW(set_max_cpu_isa(isa), Error);
        return;
    }
    GTEST_SKIP() << "this CPU runs every compiled ISA variant";
}

TEST_F(Errors, UnknownIsaName) {
    EXPECT_THROW(isa_from_name("avx9000"), Error);
}

TEST_F(Errors, DeviceTensorOnCpuModule) {
    expect_error([&] {
        bn.forward(Tensor::on_device(1234, {4, 3, 5, 6}, Device::OpenCL), view(y, s));
    }, {"is on opencl but the module is on cpu"});
}

TEST_F(Errors, MissingCudaGivesClearError) {
    if (device_available(Device::Cuda)) GTEST_SKIP() << "a CUDA device is present";
    EXPECT_FALSE(device_unavailable_reason(Device::Cuda).empty());
    expect_error([&] { bn.to(Device::Cuda); }, {"to(cuda)", "device not usable"});
    EXPECT_EQ(bn.device(), Device::CPU);
}

}  // namespace
}  // namespace bn2d::test
