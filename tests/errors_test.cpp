// Every error: a bn2d::Error whose message names the problem, and the module state exactly as
// it was: parameters, buffers, gradients, counters (compared bitwise), and the hidden state a
// later backward() depends on (the last forward's input and batch statistics), checked by
// running the same backward and forward on the failed module and on a twin that never saw the
// failing call.
#include <gmock/gmock.h>

#include <array>
#include <cstring>
#include <limits>

#include "common.h"

namespace bn2d::test {
namespace {

using ::testing::HasSubstr;

struct Snapshot {
    StateDict state;
    std::vector<float> weight_grad, bias_grad;
    bool training;
    double eps;
    std::optional<double> momentum;
};

Snapshot snapshot(const BatchNorm2d &bn) {
    return {bn.state_dict(),
            to_vector(bn.weight_grad()),
            to_vector(bn.bias_grad()),
            bn.is_training(),
            bn.eps(),
            bn.momentum()};
}

::testing::AssertionResult same(const Snapshot &a, const Snapshot &b) {
    ::testing::AssertionResult r = ::testing::AssertionFailure();
    bool ok = true;
    auto cmp = [&](const char *what, const auto &x, const auto &y) {
        if (!bitwise_equal(x, y)) {
            r << what << " changed; ";
            ok = false;
        }
    };
    cmp("weight", a.state.weight, b.state.weight);
    cmp("bias", a.state.bias, b.state.bias);
    cmp("running_mean", a.state.running_mean, b.state.running_mean);
    cmp("running_var", a.state.running_var, b.state.running_var);
    cmp("weight_grad", a.weight_grad, b.weight_grad);
    cmp("bias_grad", a.bias_grad, b.bias_grad);
    if (a.state.num_batches_tracked != b.state.num_batches_tracked) {
        r << "num_batches_tracked " << a.state.num_batches_tracked << " -> "
          << b.state.num_batches_tracked << "; ";
        ok = false;
    }
    if (a.training != b.training || a.eps != b.eps || a.momentum != b.momentum) {
        r << "mode, eps or momentum changed; ";
        ok = false;
    }
    return ok ? ::testing::AssertionSuccess() : r;
}

// A module with non-trivial state (random parameters, a training step and a backward done,
// then a second forward whose input backward() will read), and its twin, given the same calls.
class Errors : public ::testing::Test {
protected:
    Shape s{4, 3, 5, 6};
    std::mt19937 rng{31};
    BatchNorm2d bn{3}, twin{3};
    std::vector<float> x, x2, y, dy, dx;

    void SetUp() override {
        reference::Module ref(3);
        randomize_parameters(rng, bn, ref);
        twin.load_state_dict(bn.state_dict());
        x = random_vector(rng, s.numel(), 1.0f, 2.0f);
        x2 = random_vector(rng, s.numel(), -1.0f, 0.5f);
        y = poisoned(s.numel());
        dy = random_vector(rng, s.numel());
        dx = poisoned(s.numel());
        for (BatchNorm2d *m : {&bn, &twin}) {
            m->forward(view(x, s), view(y, s));
            m->backward(view(dy, s), view(dx, s));
            m->forward(view(x2, s), view(y, s));
        }
    }

    // Runs f, expects an Error mentioning every one of `words`, the visible state bitwise
    // unchanged and, with check_hidden, the same backward and forward results as the twin.
    template<typename F>
    void expect_error(F &&f, std::initializer_list<const char *> words, bool check_hidden = true) {
        const Snapshot before = snapshot(bn);
        try {
            f();
            ADD_FAILURE() << "no exception";
        } catch (const Error &e) {
            for (const char *w : words) EXPECT_THAT(e.what(), HasSubstr(w));
        } catch (const std::exception &e) {
            ADD_FAILURE() << "not a bn2d::Error: " << e.what();
        }
        EXPECT_TRUE(same(before, snapshot(bn))) << "state changed by a failed call";
        if (check_hidden) expect_same_as_twin();
    }

    void expect_same_as_twin() {
        SCOPED_TRACE("after the failed call, compared with a twin that never made it");
        std::vector<float> dx_a = poisoned(s.numel()), dx_b = poisoned(s.numel());
        bn.backward(view(dy, s), view(dx_a, s));
        twin.backward(view(dy, s), view(dx_b, s));
        EXPECT_TRUE(bitwise_equal(dx_a, dx_b)) << "backward saw a different forward";
        EXPECT_TRUE(bitwise_equal(to_vector(bn.weight_grad()), to_vector(twin.weight_grad())));
        // The same forward as SetUp's last, so x2 stays the input backward() reads.
        std::vector<float> y_a = poisoned(s.numel()), y_b = poisoned(s.numel());
        bn.forward(view(x2, s), view(y_a, s));
        twin.forward(view(x2, s), view(y_b, s));
        EXPECT_TRUE(bitwise_equal(y_a, y_b));
        EXPECT_TRUE(same(snapshot(bn), snapshot(twin)));
    }
};

TEST_F(Errors, RankNotFour) {
    expect_error(
        [&] {
            bn.forward(Tensor(x.data(), {4, 3, 30}), Tensor(y.data(), {4, 3, 30}));
        },
        {"input", "4-D", "3-D"});
    expect_error(
        [&] {
            bn.forward(Tensor(x.data(), {1, 4, 3, 5, 6}), Tensor(y.data(), {1, 4, 3, 5, 6}));
        },
        {"input", "4-D", "5-D"});
    expect_error([&] { bn.forward(view(x, s), Tensor(y.data(), {4, 3, 30})); }, {"out", "4-D"});
    expect_error(
        [&] {
            bn.backward(Tensor(dy.data(), {4, 3, 30}), view(dx, s));
        },
        {"grad_out", "4-D"});
}

TEST_F(Errors, ChannelsNotNumFeatures) {
    expect_error(
        [&] {
            bn.forward(Tensor(x.data(), {4, 5, 3, 6}), Tensor(y.data(), {4, 5, 3, 6}));
        },
        {"3 channels", "C = 5"});
    expect_error(
        [&] {
            bn.forward(Tensor(x.data(), {4, 1, 15, 6}), Tensor(y.data(), {4, 1, 15, 6}));
        },
        {"3 channels", "C = 1"});
}

TEST_F(Errors, OutWrongShape) {
    expect_error(
        [&] {
            bn.forward(view(x, s), Tensor(y.data(), {4, 3, 6, 5}));
        },
        {"out", "[4, 3, 6, 5]", "expected [4, 3, 5, 6]"});
    expect_error(
        [&] {
            bn.forward(view(x, s), Tensor(y.data(), {2, 3, 5, 6}));
        },
        {"out", "[2, 3, 5, 6]", "expected [4, 3, 5, 6]"});
}

TEST_F(Errors, NullData) {
    expect_error([&] { bn.forward(Tensor(nullptr, {4, 3, 5, 6}), view(y, s)); }, {"input", "null"});
    expect_error([&] { bn.forward(view(x, s), Tensor()); }, {"out", "null"});
    expect_error([&] { bn.forward(view(x, s), Tensor(nullptr, {4, 3, 5, 6})); }, {"out", "null"});
    expect_error(
        [&] {
            bn.backward(Tensor(nullptr, {4, 3, 5, 6}), view(dx, s));
        },
        {"grad_out", "null"});
}

TEST_F(Errors, NegativeSize) {
    expect_error(
        [&] {
            bn.forward(Tensor(x.data(), {4, 3, -5, 6}), Tensor(y.data(), {4, 3, -5, 6}));
        },
        {"negative"});
}

TEST_F(Errors, OutOverlapsInput) {
    expect_error([&] { bn.forward(view(x, s), view(x, s)); }, {"overlaps", "in-place"});
    // A partial overlap: out starts in the middle of x.
    std::vector<float> big(2 * s.numel(), 1.0f);
    expect_error(
        [&] {
            bn.forward(view(big, s), Tensor(big.data() + s.numel() / 2, {4, 3, 5, 6}));
        },
        {"overlaps"});
    expect_error([&] { bn.backward(view(dy, s), view(dy, s)); }, {"grad_input", "overlaps"});
    // grad_input over the forward's input (backward reads it).
    expect_error([&] { bn.backward(view(dy, s), view(x2, s)); }, {"grad_input", "overlaps"});
}

// Any strides are accepted (tests/layouts_dtypes_test.cpp); an output that would write two
// elements to one address is not.
TEST_F(Errors, OutputOverlapsItself) {
    std::vector<float> wide(2 * s.numel(), 1.0f);
    const std::vector<int64_t> sizes = {4, 3, 5, 6};
    expect_error(
        [&] {
            bn.forward(view(x, s), Tensor(wide.data(), sizes, {0, 30, 6, 1}));
        },
        {"out", "overlapping elements", "[0, 30, 6, 1]"});
    expect_error(
        [&] {
            bn.backward(view(dy, s), Tensor(wide.data(), sizes, {90, 30, 6, 2}));
        },
        {"grad_input", "overlapping elements"});
}

// dtype rules (PyTorch's): the input has the parameters' dtype, or is 16-bit with float32
// parameters; outputs and gradients have the input's dtype.
TEST_F(Errors, DtypeMismatch) {
    std::vector<double> x64(s.numel(), 1.5), y64(s.numel());
    std::vector<uint16_t> yb(s.numel());
    const std::vector<int64_t> sizes = {4, 3, 5, 6};
    expect_error(
        [&] {
            bn.forward(Tensor(x64.data(), DType::float64, sizes),
                       Tensor(y64.data(), DType::float64, sizes));
        },
        {"input is float64", "parameters are float32"});
    expect_error([&] { bn.forward(view(x, s), Tensor(yb.data(), DType::bfloat16, sizes)); },
                 {"out is bfloat16 but input is float32"});
    expect_error([&] { bn.backward(Tensor(yb.data(), DType::bfloat16, sizes), view(dx, s)); },
                 {"grad_out is bfloat16"});
}

TEST_F(Errors, StridesDoNotMatchSizes) {
    EXPECT_THROW(Tensor(x.data(), {4, 3, 5, 6}, {90, 30, 6}), Error);
}

// Halide buffers hold strides in 32 bits, also in the large_buffers kernels: a stride of 2^31
// elements cannot be described to a kernel. The view is over an address-space reservation (no
// memory is touched: validation fails first).
TEST_F(Errors, StrideBeyondHalideBuffers) {
    Reservation big((int64_t(1) << 31) + 64);
    if (!big.data()) GTEST_SKIP() << "cannot reserve 8 GiB of address space";
    std::array<float, 48> out{};
    const std::vector<int64_t> sizes = {2, 3, 2, 4};
    expect_error(
        [&] {
            bn.forward(Tensor(big.data(), sizes, {int64_t(1) << 31, 8, 4, 1}),
                       Tensor(out.data(), sizes));
        },
        {"too large", "stride 2147483648", "32-bit"});
}

TEST_F(Errors, BadEps) {
    for (double eps : {-1e-5, std::nan(""), double(INFINITY), -double(INFINITY)}) {
        SCOPED_TRACE(eps);
        try {
            BatchNorm2d b(3, eps);
            ADD_FAILURE() << "constructor accepted eps " << eps;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr("eps must be finite and >= 0"));
        }
        try {
            BatchNorm2d b(3, Options{eps});
            ADD_FAILURE() << "constructor (Options) accepted eps " << eps;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr("eps"));
        }
        expect_error([&] { bn.set_eps(eps); }, {"eps must be finite and >= 0"});
    }
    EXPECT_EQ(bn.eps(), 1e-5);
}

TEST_F(Errors, MomentumOutsideUnitInterval) {
    for (double m : {-0.1, 1.5, std::nan(""), double(INFINITY)}) {
        SCOPED_TRACE(m);
        try {
            BatchNorm2d b(3, 1e-5, m);
            ADD_FAILURE() << "constructor accepted momentum " << m;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr("momentum must be in [0, 1]"));
        }
        expect_error([&] { bn.set_momentum(m); }, {"momentum must be in [0, 1]"});
    }
    EXPECT_EQ(bn.momentum(), 0.1);
    // The bounds themselves and None are fine.
    for (std::optional<double> m :
         {std::optional<double>(0.0), std::optional<double>(1.0), std::optional<double>()}) {
        EXPECT_NO_THROW(BatchNorm2d(3, 1e-5, m));
    }
}

TEST_F(Errors, NumFeaturesNegative) {
    EXPECT_THROW(BatchNorm2d(-3), Error);
    EXPECT_THROW(BatchNorm2d(-1, Options{}), Error);
}

// An enum value cast from an integer outside the enum is refused where it enters (the module's
// options, a tensor), with the value, not reported later as "?".
TEST_F(Errors, EnumValuesOutsideTheirEnum) {
    Options o;
    o.dtype = static_cast<DType>(7);
    try {
        BatchNorm2d bad(3, o);
        ADD_FAILURE() << "constructed a module of dtype 7";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("BatchNorm2d: unknown dtype 7"));
    }
    try {
        Tensor t(x.data(), static_cast<DType>(-1), {s.n, s.c, s.h, s.w});
        ADD_FAILURE() << "made a tensor of dtype -1";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("Tensor: unknown dtype -1"));
    }
    try {
        Tensor t(x.data(), {s.n, s.c, s.h, s.w}, static_cast<Device>(5));
        ADD_FAILURE() << "made a tensor on device 5";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("Tensor: unknown device 5"));
    }
}

// A SyncBatchNorm2d group whose rank and size say what the test asks, and whose collectives
// throw when told to (as an application's communicator may).
class ScriptedGroup final : public Communicator {
public:
    int rank_ = 0, size_ = 1;
    bool collectives_fail = false;
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string name() const override { return "scripted"; }
    Device memory() const override { return Device::CPU; }
    void all_gather_bytes(const void *send, void *recv, size_t bytes) override {
        std::memcpy(recv, send, bytes);
    }
    void all_gather(const double *send, double *recv, size_t count) override {
        if (collectives_fail) throw std::runtime_error("LocalGroup: all_gather failed");
        std::memcpy(recv, send, count * sizeof(double));
    }
    void all_reduce_sum(double *, size_t) override {
        if (collectives_fail) throw std::runtime_error("LocalGroup: all_reduce failed");
    }
};

// Each communicator error says what is inconsistent and in which call, and changes nothing.
TEST_F(Errors, CommunicatorErrorsSayWhatAndWhere) {
    auto group = std::make_shared<ScriptedGroup>();
    auto expect_error = [&](auto &&call, const std::string &what) {
        try {
            call();
            ADD_FAILURE() << "no error, expected: " << what;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr(what));
        }
    };
    group->rank_ = 1;
    expect_error([&] { SyncBatchNorm2d(3, group); },
                 "SyncBatchNorm2d: constructor: the scripted communicator reports rank 1, not "
                 "below its size 1");
    group->rank_ = 0;
    group->size_ = 0;
    expect_error([&] { SyncBatchNorm2d(3, group); }, "reports size 0 (a group has at least 1");
    group->size_ = 1;
    group->rank_ = -2;
    expect_error([&] { SyncBatchNorm2d(3, group); }, "reports rank -2 (ranks start at 0)");

    // convert refuses before it takes the module: the module is still whole.
    const StateDict state = bn.state_dict();
    expect_error([&] { SyncBatchNorm2d::convert(std::move(bn), group); },
                 "SyncBatchNorm2d: convert: the scripted communicator reports rank -2");
    EXPECT_TRUE(same_state(bn.state_dict(), state));
    EXPECT_NO_THROW(bn.forward(view(x, s), view(y, s)));

    // A collective that throws, and a group that changed after construction: named with the
    // call, the state as it was.
    group->rank_ = 0;
    SyncBatchNorm2d synced(3, group);
    synced.forward(view(x, s), view(y, s));
    const StateDict synced_state = synced.state_dict();
    group->collectives_fail = true;
    expect_error([&] { synced.forward(view(x2, s), view(y, s)); },
                 "SyncBatchNorm2d: forward: the scripted communicator's all_gather (every "
                 "process's count, mean and M2) failed on rank 0 of 1: LocalGroup: all_gather "
                 "failed");
    EXPECT_TRUE(same_state(synced.state_dict(), synced_state));
    expect_error([&] { synced.backward(view(dy, s), view(dx, s)); },
                 "SyncBatchNorm2d: backward: the scripted communicator's all_reduce_sum (the "
                 "gradient sums) failed on rank 0 of 1: LocalGroup: all_reduce failed");
    EXPECT_EQ(to_vector(synced.weight_grad()), std::vector<float>(3, 0.0f));
    group->collectives_fail = false;
    group->size_ = 0;
    expect_error([&] { synced.forward(view(x2, s), view(y, s)); },
                 "SyncBatchNorm2d: forward: the scripted communicator reports size 0");
    EXPECT_TRUE(same_state(synced.state_dict(), synced_state));
}

// Sizes near 2^62: the element count, the memory span and N*H*W overflow int64. Each is an
// error before any memory is touched (the views are over a small buffer). Before the checks,
// [2^62, 4, 4, 1] had numel() 0 (2^66 wrapped) and was counted as an empty training batch.
TEST_F(Errors, SizeProductsOverflow) {
    const int64_t huge = int64_t(1) << 62;
    std::vector<float> small(64, 1.0f), out(64);
    EXPECT_THROW(Tensor(small.data(), {huge, 4, 4, 1}).numel(), Error);
    EXPECT_THROW(Tensor(small.data(), {4, huge, 4, 4}), Error);  // its N stride overflows
    // (out is checked after the input: it need not be well-formed here.)
    expect_error(
        [&] {
            bn.forward(Tensor(small.data(), {huge, 3, 4, 1}, {1, 1, 1, 1}), view(y, s));
        },
        {"input", "overflows"});
    // numel fits (2 * 3 * 2 * 4), the memory span does not: (2 - 1) * 2^62 floats.
    expect_error(
        [&] {
            bn.forward(Tensor(small.data(), {2, 3, 2, 4}, {huge, 8, 4, 1}),
                       Tensor(out.data(), {2, 3, 2, 4}));
        },
        {"input", "memory span overflows"});
    // Mixed signs: each reach fits, their bytes do not.
    expect_error(
        [&] {
            bn.forward(Tensor(out.data(), {2, 3, 2, 4}),
                       Tensor(small.data(), {2, 3, 2, 4}, {huge, -huge, 4, 1}));
        },
        {"out", "memory span overflows"});
    EXPECT_EQ(bn.num_batches_tracked(), twin.num_batches_tracked());
}

TEST(ZeroFeatures, EmptyTensorsWithHugeBatchOverflowNHW) {
    BatchNorm2d bn(0);
    const int64_t huge = int64_t(1) << 62;
    std::vector<float> none(1);
    EXPECT_THROW(bn.forward(Tensor(none.data(), {huge, 0, 4, 4}),
                            Tensor(none.data(), {huge, 0, 4, 4}, {0, 0, 0, 0})),
                 Error);
    EXPECT_EQ(bn.num_batches_tracked(), 0);
}

// Outputs over the module's own storage (the views weight() ... bias_grad() return) would
// corrupt the state; an input over running statistics the step updates would change under
// the saved forward input. Both were accepted before.
TEST_F(Errors, TensorsOverModuleState) {
    bn.eval();
    twin.eval();
    std::vector<float> x1 = random_vector(rng, 3), y1 = poisoned(3);
    const std::vector<int64_t> one = {1, 3, 1, 1};
    // (check_hidden off: the twin replay's backward needs a training forward.)
    for (const Tensor &state : {bn.weight(), bn.bias(), bn.running_mean(), bn.running_var(),
                                bn.weight_grad(), bn.bias_grad()})
        expect_error([&] { bn.forward(Tensor(x1.data(), one), Tensor(state.data<float>(), one)); },
                     {"out overlaps the module's", "()"}, false);
    expect_error(
        [&] {
            bn.forward(Tensor(x1.data(), one),
                       Tensor(bn.running_var().data<float>() + 1, one, {3, 1, 1, 1}));
        },
        {"out overlaps the module's running_var()"}, false);
    bn.forward(Tensor(x1.data(), one), Tensor(y1.data(), one));  // an eval forward to go back from
    std::vector<float> dy1 = random_vector(rng, 3);
    expect_error(
        [&] { bn.backward(Tensor(dy1.data(), one), Tensor(bn.weight_grad().data<float>(), one)); },
        {"grad_input overlaps the module's weight_grad()"}, false);
    expect_error(
        [&] { bn.backward(Tensor(bn.bias_grad().data<float>(), one), Tensor(y1.data(), one)); },
        {"grad_out overlaps the module's bias_grad()"}, false);
    // Reading the parameters is fine: grad_out over weight() with grad_input elsewhere.
    std::vector<float> dx1 = poisoned(3);
    EXPECT_NO_THROW(bn.backward(Tensor(bn.weight().data<float>(), one), Tensor(dx1.data(), one)));

    // Training: an input over running_mean (zero batch stride: two identical images).
    bn.train();
    const Tensor over_mean(bn.running_mean().data<float>(), {2, 3, 1, 1}, {0, 1, 1, 1});
    std::vector<float> y2 = poisoned(6);
    expect_error(
        [&] {
            bn.forward(over_mean, Tensor(y2.data(), {2, 3, 1, 1}));
        },
        {"input overlaps the module's running_mean()"}, false);
    // In eval mode nothing writes it: the same input is accepted.
    bn.eval();
    EXPECT_NO_THROW(bn.forward(over_mean, Tensor(y2.data(), {2, 3, 1, 1})));
}

TEST_F(Errors, SingleValuePerChannelWhenTraining) {
    std::vector<float> one = random_vector(rng, 3), out = poisoned(3);
    expect_error(
        [&] {
            bn.forward(Tensor(one.data(), {1, 3, 1, 1}), Tensor(out.data(), {1, 3, 1, 1}));
        },
        {"expected more than 1 value per channel when training", "[1, 3, 1, 1]"});
    EXPECT_TRUE(std::isnan(out[0])) << "wrote the output of a rejected call";
    // Eval with tracked statistics is fine, as in PyTorch.
    bn.eval();
    EXPECT_NO_THROW(bn.forward(Tensor(one.data(), {1, 3, 1, 1}), Tensor(out.data(), {1, 3, 1, 1})));
    // Without tracked statistics eval uses batch statistics, so it is an error again.
    BatchNorm2d untracked(3, 1e-5, 0.1, true, false);
    untracked.eval();
    EXPECT_THROW(
        untracked.forward(Tensor(one.data(), {1, 3, 1, 1}), Tensor(out.data(), {1, 3, 1, 1})),
        Error);
}

TEST_F(Errors, BackwardBeforeForward) {
    BatchNorm2d fresh(3);
    const Snapshot before = snapshot(fresh);
    try {
        fresh.backward(view(dy, s), view(dx, s));
        ADD_FAILURE() << "no exception";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("needs a forward() first"));
    }
    EXPECT_TRUE(same(before, snapshot(fresh)));
    // A failed forward does not count as one.
    EXPECT_THROW(fresh.forward(Tensor(x.data(), {4, 5, 3, 6}), Tensor(y.data(), {4, 5, 3, 6})),
                 Error);
    EXPECT_THROW(fresh.backward(view(dy, s), view(dx, s)), Error);
}

TEST_F(Errors, BackwardShapeDiffersFromForward) {
    std::vector<float> dy2 = random_vector(rng, 2 * 3 * 5 * 6), dx2 = poisoned(2 * 3 * 5 * 6);
    expect_error(
        [&] {
            bn.backward(Tensor(dy2.data(), {2, 3, 5, 6}), Tensor(dx2.data(), {2, 3, 5, 6}));
        },
        {"grad_out", "[2, 3, 5, 6]", "expected [4, 3, 5, 6]"});
    expect_error(
        [&] {
            bn.backward(view(dy, s), Tensor(dx.data(), {4, 3, 6, 5}));
        },
        {"grad_input", "[4, 3, 6, 5]", "expected [4, 3, 5, 6]"});
}

// A failed forward must not replace the forward that backward() differentiates.
TEST_F(Errors, FailedForwardKeepsTheLastGoodOne) {
    std::vector<float> other = random_vector(rng, 2 * 3 * 5 * 6);
    expect_error(
        [&] {
            bn.forward(Tensor(other.data(), {2, 3, 5, 6}), Tensor(y.data(), {2, 3, 6, 5}));
        },
        {"out"});  // expect_error then checks backward against the twin
}

TEST_F(Errors, TrainingBackwardAfterEvalForward) {
    bn.eval();
    bn.forward(view(x, s), view(y, s));
    bn.train();
    expect_error([&] { bn.backward(view(dy, s), view(dx, s)); },
                 {"training-mode backward with no training forward"}, false);
}

// The converse is rejected too (PyTorch's autograd would differentiate the recorded training
// forward): the mode of backward must be the mode of the forward.
TEST_F(Errors, EvalBackwardAfterTrainingForward) {
    bn.eval();
    expect_error([&] { bn.backward(view(dy, s), view(dx, s)); }, {"eval-mode backward"}, false);
}

TEST_F(Errors, GradInputRequestedButUndefined) {
    expect_error(
        [&] {
            bn.backward(view(dy, s), Tensor(), BackwardMask{true, true});
        },
        {"grad_input", "null"});
    expect_error(
        [&] {
            bn.backward(view(dy, s), Tensor(), BackwardMask{true, false});
        },
        {"grad_input", "null"});
}

TEST_F(Errors, LoadStateDictWrongSizes) {
    StateDict bad = bn.state_dict();
    bad.running_var.pop_back();
    expect_error([&] { bn.load_state_dict(bad); }, {"running_var", "2 values, expected 3"});
    bad = bn.state_dict();
    bad.running_mean.push_back(0.0f);
    expect_error([&] { bn.load_state_dict(bad); }, {"running_mean", "4 values, expected 3"});
    bad = bn.state_dict();
    bad.weight.clear();
    expect_error([&] { bn.load_state_dict(bad); }, {"weight", "0 values, expected 3"});
    bad = bn.state_dict();
    bad.bias.resize(5, 0.0f);
    expect_error([&] { bn.load_state_dict(bad); }, {"bias", "5 values, expected 3"});
    bad = bn.state_dict();
    bad.num_batches_tracked = -1;
    expect_error([&] { bn.load_state_dict(bad); }, {"num_batches_tracked"});
    // All or nothing: a dict whose weight is fine but running_var is not loads nothing.
    bad = bn.state_dict();
    for (double &w : bad.weight) w = 42.0;
    bad.running_var.clear();
    expect_error([&] { bn.load_state_dict(bad); }, {"running_var"});
}

TEST(LoadStateDict, PresenceMustMatchOptions) {
    BatchNorm2d plain(3, 1e-5, 0.1, /*affine=*/false, /*track=*/false);
    StateDict d;
    d.weight = {1, 2, 3};
    try {
        plain.load_state_dict(d);
        ADD_FAILURE() << "loaded a weight into an affine=false module";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("weight has 3 values, expected 0"));
    }
    d = StateDict{};
    d.running_mean = {0, 0, 0};
    EXPECT_THROW(plain.load_state_dict(d), Error);
    EXPECT_NO_THROW(plain.load_state_dict(StateDict{}));
}

// A value that is no CpuIsa (a cast from an integer) is refused, and the cap stays as it was.
TEST_F(Errors, IsaValueOutsideTheTable) {
    const CpuIsa before = max_cpu_isa();
    for (int bad : {-1, static_cast<int>(compiled_cpu_isas().size()), 99}) {
        try {
            set_max_cpu_isa(static_cast<CpuIsa>(bad));
            ADD_FAILURE() << "accepted CpuIsa " << bad;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr("unknown CPU ISA " + std::to_string(bad)));
            EXPECT_THAT(e.what(), HasSubstr(isa_name(compiled_cpu_isas().front())));
        }
        EXPECT_EQ(max_cpu_isa(), before);
    }
}

TEST_F(Errors, UnknownIsaName) {
    try {
        isa_from_name("avx9000");
        ADD_FAILURE() << "no exception";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("avx9000"));
    }
    for (CpuIsa isa : compiled_cpu_isas()) EXPECT_EQ(isa_from_name(isa_name(isa)), isa);
}

TEST_F(Errors, NegativeThreadCount) {
    const int before = num_threads();
    EXPECT_THROW(set_num_threads(-1), Error);
    EXPECT_EQ(num_threads(), before);
}

// Halide's pool holds at most 256 threads and would clamp silently; 256 itself is accepted.
TEST_F(Errors, ThreadCountOverThePoolLimit) {
    const int before = num_threads();
    try {
        set_num_threads(1000);
        ADD_FAILURE() << "no exception";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("at most 256"));
        EXPECT_THAT(e.what(), HasSubstr("1000"));
    }
    EXPECT_EQ(num_threads(), before);
    set_num_threads(256);
    EXPECT_EQ(num_threads(), 256);
    set_num_threads(before);
}

// num_batches_tracked + 1 at INT64_MAX would be signed overflow (undefined behaviour): a
// training step refuses with the state unchanged; eval, which does not count, still runs.
TEST_F(Errors, NumBatchesTrackedAtItsMaximum) {
    StateDict d = bn.state_dict();
    d.num_batches_tracked = std::numeric_limits<int64_t>::max();
    bn.load_state_dict(d);
    twin.load_state_dict(d);
    // (check_hidden off: its replay is a training forward, which refuses here too.)
    expect_error([&] { bn.forward(view(x, s), view(y, s)); }, {"num_batches_tracked", "overflow"},
                 false);
    bn.eval();
    std::vector<float> y_eval = poisoned(s.numel());
    bn.forward(view(x, s), view(y_eval, s));
    EXPECT_EQ(bn.state_dict().num_batches_tracked, std::numeric_limits<int64_t>::max());
}

TEST_F(Errors, DeviceBufferUploadWrongSize) {
    DeviceBuffer b(Device::CPU, {2, 3});
    try {
        b.upload(std::vector<float>(5, 1.0f));
        ADD_FAILURE() << "no exception";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("5 elements for a buffer of 6"));
    }
    EXPECT_THROW(DeviceBuffer(Device::CPU, {2, -3}), Error);
    // 2^62 * 8 wrapped to 0 elements before the product was checked, and was accepted.
    EXPECT_THROW(DeviceBuffer(Device::CPU, {int64_t(1) << 62, 8}), Error);
    EXPECT_EQ(DeviceBuffer(Device::CPU, {int64_t(1) << 62, 0}).numel(), 0);
}

TEST_F(Errors, DeviceTensorOnCpuModule) {
    expect_error(
        [&] {
            bn.forward(Tensor::on_device(1234, {4, 3, 5, 6}, Device::OpenCL), view(y, s));
        },
        {"is on opencl but the module is on cpu"});
    EXPECT_THROW(Tensor::on_device(1234, {4, 3, 5, 6}, Device::CPU), Error);
}

// A GPU backend this build has no kernels for (BN2D_GPU=OFF, or left out of BN2D_GPU_BACKENDS,
// as in the ASan build) is unavailable whatever the machine has, and says which option.
TEST_F(Errors, GpuBackendNotBuiltIsUnavailableAndSaysWhy) {
    const BuildInfo &info = build_info();
    bool tested = false;
    for (Device d : {Device::Cuda, Device::OpenCL}) {
        if (!(d == Device::Cuda ? info.cuda_target : info.opencl_target).empty()) continue;
        tested = true;
        EXPECT_FALSE(device_available(d));
        EXPECT_NE(device_unavailable_reason(d).find("BN2D_GPU"), std::string::npos)
            << device_unavailable_reason(d);
        expect_error([&] { bn.to(d); }, {"device not usable", "BN2D_GPU"});
        EXPECT_EQ(bn.device(), Device::CPU);
    }
    if (!tested) GTEST_SKIP() << "this build has every GPU backend's kernels";
}

TEST_F(Errors, MissingCudaGivesClearError) {
    if (device_available(Device::Cuda)) GTEST_SKIP() << "a CUDA device is present";
    EXPECT_FALSE(device_unavailable_reason(Device::Cuda).empty());
    expect_error([&] { bn.to(Device::Cuda); }, {"to(cuda)", "device not usable"});
    EXPECT_EQ(bn.device(), Device::CPU);
}

}  // namespace
}  // namespace bn2d::test
