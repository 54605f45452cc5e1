// Parity with libtorch's torch::nn::BatchNorm2d on the same inputs: outputs, every buffer after
// several training steps, eval output, and autograd gradients in training and eval mode.
#include <torch/torch.h>

#include <tuple>

#include "common.h"

namespace bn2d::test {
namespace {

torch::Tensor to_torch(const std::vector<float> &v, const Shape &s) {
    return torch::from_blob(const_cast<float *>(v.data()), {s.n, s.c, s.h, s.w}).clone();
}
std::vector<float> from_torch(const torch::Tensor &t) {
    torch::Tensor c = t.detach().contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

using Param = std::tuple<Shape, bool, bool, bool>; // shape, affine, track, momentum none

class TorchParity : public ::testing::TestWithParam<Param> {};

TEST_P(TorchParity, ForwardBuffersAndGradientsAgree) {
    const auto [s, affine, track, cumulative] = GetParam();
    torch::manual_seed(0);
    std::mt19937 rng(std::hash<std::string>()(name(s)) + affine + 2 * track + 4 * cumulative);
    const std::optional<double> momentum = cumulative ? std::nullopt : std::optional<double>(0.1);
    auto opts =
        torch::nn::BatchNorm2dOptions(s.c).eps(1e-5).affine(affine).track_running_stats(track);
    opts.momentum(cumulative ? c10::optional<double>() : c10::optional<double>(0.1));
    torch::nn::BatchNorm2d theirs(opts);
    BatchNorm2d ours(s.c, 1e-5, momentum, affine, track);
    if (affine) { // same random parameters in both
        std::vector<float> w = random_vector(rng, s.c, 1.0f, 0.3f),
                           b = random_vector(rng, s.c, 0.0f, 0.5f);
        torch::NoGradGuard ng;
        theirs->weight.copy_(torch::from_blob(w.data(), {s.c}));
        theirs->bias.copy_(torch::from_blob(b.data(), {s.c}));
        StateDict d = ours.state_dict();
        d.weight = w;
        d.bias = b;
        ours.load_state_dict(d);
    }
    // One forward and backward through both, outputs and gradients compared. Tolerances:
    // float32 against libtorch's float32 (double-accumulated on CPU): both round differently,
    // so allow ~100 ulps of the values involved.
    auto forward_backward_agree = [&](float mean, float stddev) {
        std::vector<float> x = random_vector(rng, s.numel(), mean, stddev), y = poisoned(s.numel());
        std::vector<float> dy = random_vector(rng, s.numel()), dx = poisoned(s.numel());
        torch::Tensor tx = to_torch(x, s).requires_grad_(true);
        torch::Tensor ty = theirs->forward(tx);
        ours.forward(view(x, s), view(y, s));
        EXPECT_TRUE(
            all_close(y, from_torch(ty), 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
        if (affine) {
            theirs->weight.mutable_grad() = torch::Tensor();
            theirs->bias.mutable_grad() = torch::Tensor();
        }
        ty.backward(to_torch(dy, s));
        ours.zero_grad();
        ours.backward(view(dy, s), view(dx, s));
        const double gscale = 1e-5 * (1 + tx.grad().abs().max().item<double>());
        EXPECT_TRUE(all_close(dx, from_torch(tx.grad()), gscale, 1e-5,
                              [&](int64_t i) { return "grad " + where(s, i); }));
        if (affine) {
            SCOPED_TRACE("parameter gradients");
            const double pscale = param_grad_atol(s);
            EXPECT_TRUE(all_close(to_vector(ours.weight_grad()), from_torch(theirs->weight.grad()),
                                  pscale, 1e-5));
            EXPECT_TRUE(all_close(to_vector(ours.bias_grad()), from_torch(theirs->bias.grad()),
                                  pscale, 1e-5));
        }
    };
    for (int step = 0; step < 3; ++step) {
        SCOPED_TRACE("training step " + std::to_string(step));
        forward_backward_agree(0.4f * step, 1.0f + step);
        if (track) {
            EXPECT_TRUE(all_close(to_vector(ours.running_mean()), from_torch(theirs->running_mean),
                                  1e-6, 1e-5));
            EXPECT_TRUE(all_close(to_vector(ours.running_var()), from_torch(theirs->running_var),
                                  1e-6, 1e-5));
            EXPECT_EQ(ours.num_batches_tracked(), theirs->num_batches_tracked.item<int64_t>());
        }
    }
    theirs->eval();
    ours.eval();
    SCOPED_TRACE("eval");
    forward_backward_agree(-1.0f, 2.0f);
}

std::string param_name(const ::testing::TestParamInfo<Param> &info) {
    const auto [shape, affine, track, cumulative] = info.param;
    return name(shape) + (affine ? "_affine" : "_plain") + (track ? "_track" : "_notrack") +
           (cumulative ? "_cumulative" : "_momentum");
}

INSTANTIATE_TEST_SUITE_P(
    Grid, TorchParity,
    ::testing::Combine(::testing::ValuesIn(problems::load("parity")),
                       ::testing::Bool(), ::testing::Bool(), ::testing::Bool()),
    param_name);

// An empty batch in libtorch: empty output, running statistics untouched, the batch counted
// (so the next cumulative-average factor is 1/2). Ours does the same.
TEST(TorchParityEdge, EmptyBatchThenRealBatch) {
    auto opts = torch::nn::BatchNorm2dOptions(3).momentum(c10::optional<double>());
    torch::nn::BatchNorm2d theirs(opts);
    BatchNorm2d ours(3, 1e-5, std::nullopt);
    torch::Tensor empty = torch::empty({0, 3, 4, 4});
    EXPECT_EQ(theirs->forward(empty).numel(), 0);
    ours.forward(Tensor(nullptr, {0, 3, 4, 4}), Tensor(nullptr, {0, 3, 4, 4}));
    EXPECT_EQ(ours.num_batches_tracked(), theirs->num_batches_tracked.item<int64_t>());
    EXPECT_TRUE(all_close(to_vector(ours.running_var()), from_torch(theirs->running_var), 0, 0));
    const Shape s{2, 3, 4, 4};
    std::mt19937 rng(51);
    std::vector<float> x = random_vector(rng, s.numel(), 2.0f, 3.0f), y = poisoned(s.numel());
    torch::NoGradGuard ng;
    torch::Tensor ty = theirs->forward(to_torch(x, s));
    ours.forward(view(x, s), view(y, s));
    EXPECT_EQ(ours.num_batches_tracked(), theirs->num_batches_tracked.item<int64_t>());
    EXPECT_TRUE(all_close(y, from_torch(ty), 1e-5, 1e-5, [&](int64_t i) { return where(s, i); }));
    EXPECT_TRUE(
        all_close(to_vector(ours.running_mean()), from_torch(theirs->running_mean), 1e-6, 1e-5));
    EXPECT_TRUE(
        all_close(to_vector(ours.running_var()), from_torch(theirs->running_var), 1e-6, 1e-5));
}

// Both reject a training batch with one value per channel. (libtorch's C++ module increments
// num_batches_tracked before its check throws; ours leaves the state untouched on any error,
// so only the error is compared.)
TEST(TorchParityEdge, OneValuePerChannelIsAnErrorInBoth) {
    torch::nn::BatchNorm2d theirs(torch::nn::BatchNorm2dOptions(3));
    BatchNorm2d ours(3);
    std::vector<float> x = {1, 2, 3}, y(3);
    EXPECT_THROW(theirs->forward(torch::ones({1, 3, 1, 1})), c10::Error);
    EXPECT_THROW(ours.forward(Tensor(x.data(), {1, 3, 1, 1}), Tensor(y.data(), {1, 3, 1, 1})),
                 Error);
    EXPECT_EQ(ours.num_batches_tracked(), 0);
}

} // namespace
} // namespace bn2d::test
