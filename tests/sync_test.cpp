// SyncBatchNorm2d under mpirun (ctest -L mpi runs it with 1, 2 and 3 processes). Every process
// runs every test on its slice of one global batch (unequal slices, some empty), and the results
// are compared with one module over the whole batch: the float64 reference, and libtorch.
// Inputs are fresh random values: rank 0 draws the seed and every process derives the same
// global batch from it. Failures print on the process that saw them, tagged with its rank.
#include <mpi.h>

#include <gtest/gtest.h>

#include <random>

#include "bn2d/mpi.h"
#include "bn2d/sync_batchnorm2d.h"
#include "layout_dtype_check.h"
#include "mpi_world.h"
#include "relu_check.h"
#ifdef BN2D_SYNC_TEST_TORCH
#include "torch_helpers.h"
#endif

namespace bn2d::test {
namespace {

std::shared_ptr<Communicator> world() { return mpi_communicator(MPI_COMM_WORLD); }

// Batch items of each process: unequal, and with three processes or more one of them empty.
// `empty_first`: rank 0 has none (the merge must start from the next process).
std::vector<int64_t> batch_sizes(int processes, bool empty_first) {
    std::vector<int64_t> n(static_cast<size_t>(processes));
    for (int r = 0; r < processes; ++r) n[r] = (processes >= 3 && r % 3 == 1) ? 0 : 2 + (r * 3) % 4;
    if (processes == 1) n[0] = 3;
    if (empty_first && processes > 1) n[0] = 0;
    return n;
}

// One process's slice of a global batch: items [first, first + count).
struct Slice {
    int64_t first = 0;
    Shape shape;
};
Slice slice_of(const Shape &global, const std::vector<int64_t> &sizes, int rank) {
    Slice s;
    for (int r = 0; r < rank; ++r) s.first += sizes[r];
    s.shape = {sizes[rank], global.c, global.h, global.w};
    return s;
}
std::vector<double> take(const std::vector<double> &global, const Shape &g, const Slice &s) {
    const int64_t item = g.c * g.h * g.w;
    return std::vector<double>(global.begin() + s.first * item,
                               global.begin() + (s.first + s.shape.n) * item);
}
// The global vector of values every process has: rounded to the dtype (as stored).
std::vector<double> global_values(std::mt19937 &rng, DType dtype, const Shape &g, double mean,
                                  double stddev) {
    TypedTensor t(dtype, g, "nchw");
    return t.randomize(rng, mean, stddev);
}
void fill(TypedTensor &t, const std::vector<double> &v) {
    for (size_t i = 0; i < v.size(); ++i) t.set(static_cast<int64_t>(i), v[i]);
}
std::vector<double> sum_over_processes(std::vector<double> v) {
    MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM,
                  MPI_COMM_WORLD);
    return v;
}

struct Config {
    DType dtype;
    std::string layout;
    bool affine;
    std::optional<double> momentum;
    bool relu, residual, empty_first;
    Device device;
    int64_t channels;
    std::string name() const {
        std::string n = std::string(dtype_short_name(dtype)) + "_" + layout + "_C" +
                        std::to_string(channels) + (affine ? "" : "_noaffine") +
                        (momentum ? "" : "_cumulative") + (residual ? "_add" : "") +
                        (relu ? "_relu" : "") + (empty_first ? "_rank0empty" : "");
        if (device != Device::CPU) n += std::string("_") + device_name(device);
        return n;
    }
};
void PrintTo(const Config &c, std::ostream *os) { *os << c.name(); }

class SyncMatchesOneModule : public ::testing::TestWithParam<Config> {};

// Two training steps (forward, backward) on every process's slice, then an eval forward;
// outputs, running statistics, grad_input and the group's parameter gradients against one
// float64 module over the whole batch.
TEST_P(SyncMatchesOneModule, OverTheWholeBatch) {
    const Config cfg = GetParam();
    if (cfg.device != Device::CPU && !device_available(cfg.device))
        GTEST_SKIP() << device_name(cfg.device) << ": " << device_unavailable_reason(cfg.device);
    if (!dtype_not_built(cfg.dtype).empty()) GTEST_SKIP() << dtype_not_built(cfg.dtype);
    const int P = world_size(), rank = world_rank();
    const std::vector<int64_t> sizes = batch_sizes(P, cfg.empty_first);
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    const Shape g{total, cfg.channels, 5, 7};
    const Slice mine = slice_of(g, sizes, rank);
    const Shape &s = mine.shape;
    std::mt19937 rng(shared_seed());
    const Tolerance tol = tolerance(cfg.dtype);

    Options o;
    o.affine = cfg.affine;
    o.momentum = cfg.momentum;
    o.activation = cfg.relu ? Activation::relu : Activation::none;
    o.dtype = cfg.dtype == DType::float64 ? DType::float64 : DType::float32;
    SyncBatchNorm2d bn(g.c, world(), o);
    reference::Module ref = reference_like(bn);
    randomize_parameters(rng, bn, ref);  // same seed: the same parameters everywhere
    bn.to(cfg.device);

    for (int step = 0; step < 2; ++step) {
        SCOPED_TRACE("step " + std::to_string(step) + ", rank " + std::to_string(rank) + " of " +
                     std::to_string(P) + ", batch " + s.name());
        const std::vector<double> xg = global_values(rng, cfg.dtype, g, 1.5 - step, 2.0 + step);
        const std::vector<double> zg = global_values(rng, cfg.dtype, g, 0.0, 1.0);
        const std::vector<double> dyg = global_values(rng, cfg.dtype, g, 0.2, 1.0);
        TypedTensor x(cfg.dtype, s, cfg.layout), y(cfg.dtype, s, cfg.layout),
            z(cfg.dtype, s, cfg.layout), dy(cfg.dtype, s, cfg.layout), dx(cfg.dtype, s, cfg.layout),
            dz(cfg.dtype, s, cfg.layout);
        fill(x, take(xg, g, mine));
        fill(z, take(zg, g, mine));
        fill(dy, take(dyg, g, mine));
        OnDevice xd(x, cfg.device), yd(y, cfg.device), zd(z, cfg.device), dyd(dy, cfg.device),
            dxd(dx, cfg.device), dzd(dz, cfg.device);

        if (cfg.residual) {
            bn.forward_add(xd.view(), zd.view(), yd.view());
        } else {
            bn.forward(xd.view(), yd.view());
        }
        yd.download();
        const std::vector<double> yg = reference_epilogue(
            ref.forward(g, xg), cfg.residual ? zg : std::vector<double>{}, cfg.relu);
        expect_output_close(y, take(yg, g, mine), tol, s, "y");
        EXPECT_EQ(bn.num_batches_tracked(), ref.num_batches_tracked);
        expect_running_stats(bn.state_dict(), ref, cfg.dtype);

        if (cfg.residual) {
            bn.backward_add(dyd.view(), dxd.view(), dzd.view());
        } else {
            bn.backward(dyd.view(), dxd.view());
        }
        dxd.download();
        dzd.download();
        const std::vector<double> dy_bn = cfg.relu ? through_relu(dyg, yg) : dyg;
        const reference::Module::Grads want = ref.backward(g, xg, dy_bn);
        const std::vector<double> want_dx = take(want.input, g, mine);
        expect_output_close(dx, want_dx, tol, s, "grad_input");
        if (cfg.residual) expect_output_close(dz, take(dy_bn, g, mine), tol, s, "grad_residual");
        // Each process's parameter gradients are its own (as PyTorch's): they sum to the whole
        // batch's. Gradients accumulate over the steps, like the reference's sums below.
        static std::vector<double> want_w, want_b;
        if (step == 0) want_w.assign(g.c, 0.0), want_b.assign(g.c, 0.0);
        for (int64_t c = 0; c < g.c; ++c) want_w[c] += want.weight[c], want_b[c] += want.bias[c];
        if (cfg.affine) {
            bn.to(Device::CPU);  // grads read on the host; to() forgets the forward
            // As expect_param_grads (layout_dtype_check.h), over the whole batch.
            const double atol = cfg.dtype == DType::float64
                                    ? 1e-11 * (1.0 + std::sqrt(double(g.per_channel())))
                                    : param_grad_atol(g);
            EXPECT_TRUE(
                all_close(sum_over_processes(to_vector_f64(bn.weight_grad())), want_w, atol, 1e-6));
            EXPECT_TRUE(
                all_close(sum_over_processes(to_vector_f64(bn.bias_grad())), want_b, atol, 1e-6));
            bn.to(cfg.device);
        }
    }

    // Eval: the running statistics, no communication.
    bn.eval();
    ref.training = false;
    const std::vector<double> xg = global_values(rng, cfg.dtype, g, 0.0, 1.0);
    TypedTensor x(cfg.dtype, s, cfg.layout), y(cfg.dtype, s, cfg.layout);
    fill(x, take(xg, g, mine));
    OnDevice xd(x, cfg.device), yd(y, cfg.device);
    if (cfg.residual) {
        bn.forward_add(xd.view(), xd.view(), yd.view());
    } else {
        bn.forward(xd.view(), yd.view());
    }
    yd.download();
    std::vector<double> yg =
        reference_epilogue(ref.forward(g, xg), cfg.residual ? xg : std::vector<double>{}, cfg.relu);
    expect_output_close(y, take(yg, g, mine), tol, s, "eval y");
}

std::vector<Config> configs() {
    const std::optional<double> m = 0.1, none = std::nullopt;
    const Device cpu = Device::CPU;
    return {
        {DType::float32, "nchw", true, m, false, false, false, cpu, 6},
        {DType::float32, "nchw", false, none, true, false, true, cpu, 6},
        {DType::float32, "nhwc", true, m, true, true, false, cpu, 16},      // NHWC kernels
        {DType::float32, "nhwc", true, none, false, false, false, cpu, 5},  // strided (C < 16)
        {DType::float32, "padded", true, m, false, true, true, cpu, 3},
        {DType::float64, "nchw", true, m, false, false, false, cpu, 4},
        {DType::bfloat16, "nhwc", true, m, true, false, false, cpu, 16},
        {DType::float16, "nchw", true, none, false, false, false, cpu, 5},
        // Device tensors with MPI: the statistics pass through the host.
        {DType::float32, "nchw", true, m, true, true, false, Device::OpenCL, 6},
        {DType::float32, "nhwc", true, m, false, false, true, Device::OpenCL, 16},
    };
}

INSTANTIATE_TEST_SUITE_P(Mpi, SyncMatchesOneModule, ::testing::ValuesIn(configs()),
                         [](const auto &info) { return info.param.name(); });

// A common mean 1e4 times the spread, different on every process: merged from per-process
// {count, mean, M2}, the variance keeps float64 accuracy (raw sums of squares would cancel).
TEST(Sync, LargeMeansDoNotCancelAcrossProcesses) {
    const int P = world_size(), rank = world_rank();
    const std::vector<int64_t> sizes = batch_sizes(P, false);
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    const Shape g{total, 4, 6, 6};
    const Slice mine = slice_of(g, sizes, rank);
    std::mt19937 rng(shared_seed());
    std::vector<double> xg = global_values(rng, DType::float32, g, 0.0, 1e-3);
    for (int64_t i = 0; i < g.numel(); ++i) {
        const int64_t item = i / (g.c * g.h * g.w);
        xg[i] = static_cast<float>(10.0 + xg[i] + 1e-3 * (item % 3));  // a step between items
    }
    Options o;
    o.momentum = 1.0;  // running_var = the batch's unbiased variance
    SyncBatchNorm2d bn(g.c, world(), o);
    TypedTensor x(DType::float32, mine.shape, "nchw"), y(DType::float32, mine.shape, "nchw");
    fill(x, take(xg, g, mine));
    bn.forward(x.view(), y.view());
    const reference::Stats st = reference::batch_stats(g, xg);
    const std::vector<double> rv = bn.state_dict().running_var;
    for (int64_t c = 0; c < g.c; ++c) {
        const double want = st.var[c] * total * g.h * g.w / (total * g.h * g.w - 1.0);
        EXPECT_NEAR(rv[c], want, 1e-6 * want) << "channel " << c << " rank " << rank;
    }
}

// A process whose arguments are wrong fails the step on every process, with its message, and
// no process changes its state; the group then goes on.
TEST(Sync, AFailureOnOneProcessFailsEveryProcessAndChangesNothing) {
    const int P = world_size(), rank = world_rank(), bad = P - 1;
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(shared_seed() + static_cast<uint32_t>(rank));
    std::vector<float> xv = random_vector(rng, s.numel(), 1.0f, 2.0f), yv(s.numel()),
                       dyv = random_vector(rng, s.numel()), dxv(s.numel());
    std::vector<float> wrong(static_cast<size_t>(2 * 4 * 4 * 5));
    SyncBatchNorm2d bn(s.c, world());
    bn.forward(view(xv, s), view(yv, s));
    bn.backward(view(dyv, s), view(dxv, s));
    const StateDict before = bn.state_dict();
    const std::vector<double> gw = to_vector_f64(bn.weight_grad());

    const Tensor x = rank == bad ? Tensor(wrong.data(), {2, 4, 4, 5}) : view(xv, s);
    try {
        bn.forward(x, view(yv, s));
        ADD_FAILURE() << "forward succeeded on rank " << rank;
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("forward failed on rank " + std::to_string(bad)),
                  std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("expected 3 channels"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(same_state(bn.state_dict(), before));

    // Backward: the last forward is still the good one.
    const Tensor dy = rank == bad ? Tensor(wrong.data(), {2, 4, 4, 5}) : view(dyv, s);
    EXPECT_THROW(bn.backward(dy, view(dxv, s)), Error);
    EXPECT_TRUE(bitwise_equal(to_vector_f64(bn.weight_grad()), gw));

    // Still one group: a good step works everywhere.
    EXPECT_NO_THROW(bn.forward(view(xv, s), view(yv, s)));
    EXPECT_EQ(bn.num_batches_tracked(), before.num_batches_tracked + 1);
}

TEST(Sync, ProcessesInDifferentCallsGetAnErrorNotAHang) {
    const int P = world_size(), rank = world_rank();
    if (P < 2) GTEST_SKIP() << "needs two processes";
    const Shape s{2, 3, 4, 5};
    std::mt19937 rng(shared_seed());
    std::vector<float> xv = random_vector(rng, s.numel()), yv(s.numel()), dxv(s.numel());
    SyncBatchNorm2d bn(s.c, world());
    bn.forward(view(xv, s), view(yv, s));
    const StateDict before = bn.state_dict();
    try {
        if (rank == 0)
            bn.forward(view(xv, s), view(yv, s));
        else
            bn.backward(view(xv, s), view(dxv, s));
        ADD_FAILURE() << "no error on rank " << rank;
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("different calls"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(same_state(bn.state_dict(), before));
}

TEST(Sync, DifferentNumFeaturesAreNamed) {
    const int P = world_size(), rank = world_rank();
    if (P < 2) GTEST_SKIP() << "needs two processes";
    const int64_t C = rank == 0 ? 4 : 3;
    const Shape s{2, C, 3, 3};
    std::vector<float> xv(s.numel(), 1.0f), yv(s.numel());
    xv[0] = 2.0f;
    SyncBatchNorm2d bn(C, world());
    try {
        bn.forward(view(xv, s), view(yv, s));
        ADD_FAILURE() << "no error on rank " << rank;
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("num_features differ"), std::string::npos) << e.what();
    }
    EXPECT_EQ(bn.num_batches_tracked(), 0);
}

// The group's batch must hold more than one value per channel (one process alone may hold 1).
TEST(Sync, OneValuePerChannelOverTheGroupIsRejected) {
    const int rank = world_rank();
    const Shape s{rank == 0 ? 1 : 0, 3, 1, 1};
    std::vector<float> xv(3, 1.0f), yv(3);
    SyncBatchNorm2d bn(3, world());
    const StateDict before = bn.state_dict();
    try {
        bn.forward(Tensor(xv.data(), {s.n, s.c, s.h, s.w}),
                   Tensor(yv.data(), {s.n, s.c, s.h, s.w}));
        ADD_FAILURE() << "no error on rank " << rank;
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("more than 1 value per channel"), std::string::npos)
            << e.what();
    }
    EXPECT_TRUE(same_state(bn.state_dict(), before));
}

// What a step communicates: per process, 3 float64 per channel in forward and 2 in backward,
// plus two 256-byte status messages each; nothing in eval or for parameter gradients alone.
TEST(Sync, BytesCommunicatedPerStep) {
    const Shape s{2, 64, 7, 7};
    std::mt19937 rng(shared_seed());
    std::vector<float> xv = random_vector(rng, s.numel()), yv(s.numel()),
                       dyv = random_vector(rng, s.numel()), dxv(s.numel());
    auto counting = std::make_shared<CountingCommunicator>(world());
    SyncBatchNorm2d bn(s.c, counting);
    bn.forward(view(xv, s), view(yv, s));
    EXPECT_EQ(counting->collectives, 3);
    EXPECT_EQ(counting->bytes_sent, 2 * 256 + 3 * s.c * 8);
    bn.backward(view(dyv, s), view(dxv, s));
    EXPECT_EQ(counting->collectives, 6);
    EXPECT_EQ(counting->bytes_sent, 4 * 256 + 5 * s.c * 8);
    bn.backward(view(dyv, s), Tensor(), BackwardMask{false, true});  // this process's gradients
    bn.eval();
    bn.forward(view(xv, s), view(yv, s));
    EXPECT_EQ(counting->collectives, 6);
}

TEST(Sync, ConvertKeepsTheModuleState) {
    BatchNorm2d plain(5, Options{1e-3, std::nullopt});
    std::mt19937 rng(7);
    reference::Module ref = reference_like(plain);
    randomize_parameters(rng, plain, ref);
    const StateDict before = plain.state_dict();
    SyncBatchNorm2d synced = SyncBatchNorm2d::convert(std::move(plain), world());
    EXPECT_TRUE(same_state(synced.state_dict(), before));
    EXPECT_EQ(synced.eps(), 1e-3);
    EXPECT_FALSE(synced.momentum().has_value());
    EXPECT_EQ(synced.to_string().rfind("SyncBatchNorm(5, eps=0.001, momentum=None", 0), 0u)
        << synced.to_string();
    EXPECT_EQ(synced.communicator().size(), world_size());
    EXPECT_THROW(SyncBatchNorm2d(5, nullptr), Error);
}

#ifdef BN2D_SYNC_TEST_TORCH
// libtorch's BatchNorm2d over the whole batch: the same outputs, running statistics and
// gradients (PyTorch's SyncBatchNorm computes exactly that, spread over processes).
TEST(Sync, MatchesLibtorchOverTheWholeBatch) {
    const int P = world_size(), rank = world_rank();
    const std::vector<int64_t> sizes = batch_sizes(P, false);
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    const Shape g{total, 8, 9, 11};
    const Slice mine = slice_of(g, sizes, rank);
    const Shape &s = mine.shape;
    std::mt19937 rng(shared_seed());
    const std::vector<float> xg = random_vector(rng, g.numel(), 3.0f, 2.0f);
    const std::vector<float> dyg = random_vector(rng, g.numel());
    std::vector<float> w = random_vector(rng, g.c, 1.0f, 0.3f), b = random_vector(rng, g.c);

    torch::nn::BatchNorm2d theirs(g.c);
    SyncBatchNorm2d ours(g.c, world());
    set_parameters(theirs, ours, w, b);
    torch::Tensor tx = to_torch(xg, g).requires_grad_(true);
    torch::Tensor ty = theirs->forward(tx);
    ty.backward(to_torch(dyg, g));

    const int64_t item = g.c * g.h * g.w;
    std::vector<float> x(xg.begin() + mine.first * item, xg.begin() + (mine.first + s.n) * item);
    std::vector<float> dy(dyg.begin() + mine.first * item, dyg.begin() + (mine.first + s.n) * item);
    std::vector<float> y = poisoned(s.numel()), dx = poisoned(s.numel());
    ours.forward(view(x, s), view(y, s));
    ours.backward(view(dy, s), view(dx, s));

    auto slice = [&](const std::vector<float> &v) {
        return std::vector<float>(v.begin() + mine.first * item,
                                  v.begin() + (mine.first + s.n) * item);
    };
    EXPECT_TRUE(all_close(y, slice(from_torch(ty)), 1e-5, 1e-5));
    // As torch_parity_test.cpp.
    const double gscale = 1e-5 * (1 + tx.grad().abs().max().item<double>());
    EXPECT_TRUE(all_close(dx, slice(from_torch(tx.grad())), gscale, 1e-5));
    const StateDict st = ours.state_dict();
    EXPECT_TRUE(all_close(st.running_mean, from_torch(theirs->running_mean), 1e-6, 1e-5));
    EXPECT_TRUE(all_close(st.running_var, from_torch(theirs->running_var), 1e-6, 1e-5));
    const double atol = param_grad_atol(g);
    EXPECT_TRUE(all_close(sum_over_processes(to_vector_f64(ours.weight_grad())),
                          from_torch(theirs->weight.grad()), atol, 1e-5));
    EXPECT_TRUE(all_close(sum_over_processes(to_vector_f64(ours.bias_grad())),
                          from_torch(theirs->bias.grad()), atol, 1e-5));
}
#endif

// Failures of other ranks print too, tagged with the rank (rank 0 prints the usual report).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
public:
    explicit RankFailurePrinter(int rank) : rank_(rank) {}
    void OnTestPartResult(const ::testing::TestPartResult &r) override {
        if (r.failed())
            std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "",
                         r.line_number(), r.summary());
    }
    void OnTestEnd(const ::testing::TestInfo &t) override {
        if (t.result()->Failed())
            std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, t.test_suite_name(), t.name());
    }

private:
    int rank_;
};

}  // namespace
}  // namespace bn2d::test

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    const int rank = bn2d::test::world_rank();
    if (rank != 0) {
        ::testing::TestEventListeners &listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new bn2d::test::RankFailurePrinter(rank));
    }
    int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}
