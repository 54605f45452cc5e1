// The variant table against the dispatch: every kernel of generators/variants.cmake is reached
// by some op and output mask, and BN2D_VERBOSE names each call (op, kernel, backend:isa, shape,
// layout, dtype, time).
#include <set>

#include "common.h"

namespace bn2d::test {
namespace {

TEST(Variants, TableListsKernelsAndIsas) {
    const BuildInfo &info = build_info();
    EXPECT_FALSE(info.halide_version.empty());
    EXPECT_FALSE(info.schedule_machine.empty());
    EXPECT_EQ(info.kernels.size(),
              std::set<std::string>(info.kernels.begin(), info.kernels.end()).size())
        << "a kernel is listed twice";
    // One ISA per CPU target, best first, and the last one runs on any x86-64 CPU.
    EXPECT_EQ(split(info.cpu_targets, ' ').size(), compiled_cpu_isas().size());
    EXPECT_TRUE(cpu_supports(compiled_cpu_isas().back()));
    EXPECT_EQ(info.cpu_isa_best, isa_name(best_cpu_isa()));
    EXPECT_TRUE(cpu_supports(isa_from_name(info.cpu_isa_best)));
}

TEST(Variants, VerboseNamesEveryKernelOfTheTable) {
    std::set<std::string> reached;
    // Training calls first run fused (one kernel per call), then split (below).
    StrategyGuard fused(CpuStrategy::fused);
    for (DType dtype : {DType::float32, DType::bfloat16, DType::float16, DType::float64}) {
        if (!dtype_not_built(dtype).empty()) continue;
        // padded rows (W stride 2) take the strided kernels
        for (const std::string layout : {"nchw", "nhwc", "padded"}) {
            const std::string kernel_layout = layout == "padded" ? "strided" : layout;
            const std::vector<std::string> lines =
                verbose_lines_of_every_op(Device::CPU, dtype, layout);
            ASSERT_EQ(lines.size(), 12u)
                << "one line per kernel call: 2 modes x 3 masks x (fwd + bwd)";
            for (const std::string &line : lines) {
                SCOPED_TRACE(line);
                const std::vector<std::string> f = split(line, ',');
                ASSERT_EQ(f.size(), 9u);
                EXPECT_EQ(f[1], "exec");
                EXPECT_TRUE(f[2] == "train_fwd" || f[2] == "eval_fwd" || f[2] == "train_bwd" ||
                            f[2] == "eval_bwd");
                EXPECT_EQ(f[2].substr(0, 5), f[3].substr(0, 5))
                    << "op and kernel disagree on the mode";
                const std::string suffix =
                    std::string("_") + dtype_short_name(dtype) + "_" + kernel_layout;
                EXPECT_EQ(f[3].substr(f[3].size() - suffix.size()), suffix);
                EXPECT_EQ(f[4], std::string("cpu:") + isa_name(last_cpu_isa_used()));
                EXPECT_EQ(f[5], "2x16x4x5");
                EXPECT_EQ(f[6], kernel_layout);
                EXPECT_EQ(f[7], dtype_short_name(dtype));
                EXPECT_GE(std::stod(f[8]), 0.0);
                reached.insert(f[3]);
            }
        }
    }
    // SyncBatchNorm2d's kernels (a group of one process): the per-channel merge runs on the
    // per-channel dtype, with C as its shape.
    for (DType dtype : {DType::float32, DType::bfloat16, DType::float16, DType::float64}) {
        if (!dtype_not_built(dtype).empty()) continue;
        for (const std::string layout : {"nchw", "nhwc", "padded"}) {
            const std::string kernel_layout = layout == "padded" ? "strided" : layout;
            const std::vector<std::string> lines =
                verbose_lines_of_every_op(Device::CPU, dtype, layout, true);
            ASSERT_EQ(lines.size(), 5u) << "sync_stats, sync_merge, eval_fwd, train_bwd_params, "
                                           "sync_bwd_input";
            for (const std::string &line : lines) {
                SCOPED_TRACE(line);
                const std::vector<std::string> f = split(line, ',');
                ASSERT_EQ(f.size(), 9u);
                const bool merge = f[3].rfind("sync_merge", 0) == 0;
                const char *per_channel = dtype == DType::float64 ? "f64" : "f32";
                EXPECT_EQ(f[3].substr(f[3].rfind('_', f[3].rfind('_') - 1)),
                          merge ? std::string("_") + per_channel + "_nchw"
                                : std::string("_") + dtype_short_name(dtype) + "_" + kernel_layout);
                EXPECT_EQ(f[5], merge ? "1x16x1x1" : "2x16x4x5");
                reached.insert(f[3]);
            }
        }
    }
    // The split strategy's training calls (NCHW): the sums in memory order, then the merge and
    // the normalization (forward), or grad_input from the sums (backward, when wanted).
    set_cpu_strategy(CpuStrategy::split);
    for (DType dtype : {DType::float32, DType::bfloat16, DType::float16, DType::float64}) {
        if (!dtype_not_built(dtype).empty()) continue;
        const std::vector<std::string> lines = verbose_lines_of_every_op(Device::CPU, dtype);
        const std::string suffix = std::string("_") + dtype_short_name(dtype) + "_nchw";
        std::multiset<std::string> kernels;
        for (const std::string &line : lines) {
            SCOPED_TRACE(line);
            const std::vector<std::string> f = split(line, ',');
            ASSERT_EQ(f.size(), 9u);
            const bool merge = f[3].rfind("sync_merge", 0) == 0;
            if (!merge) EXPECT_EQ(f[3].substr(f[3].size() - suffix.size()), suffix);
            kernels.insert(f[3].substr(0, f[3].find(merge ? "_f" : suffix)));
            reached.insert(f[3]);
        }
        // 3 training forwards, 3 backwards (2 of them with grad_input); eval as fused.
        EXPECT_EQ(kernels.count("split_stats"), 3u);
        EXPECT_EQ(kernels.count("sync_merge"), 3u);
        EXPECT_EQ(kernels.count("eval_fwd"), 6u);
        EXPECT_EQ(kernels.count("split_bwd_sums"), 3u);
        EXPECT_EQ(kernels.count("sync_bwd_input"), 2u);
        EXPECT_EQ(kernels.count("train_fwd") + kernels.count("train_bwd") +
                      kernels.count("train_bwd_params"),
                  0u);
    }
    for (const std::string &k : build_info().kernels)
        EXPECT_TRUE(reached.count(k)) << "kernel " << k << " of the table is never dispatched";
    EXPECT_EQ(reached.size(), build_info().kernels.size());
}

TEST(Variants, VerboseNamesTheIsaThatRan) {
    const CpuIsa saved = max_cpu_isa();
    for (CpuIsa isa : compiled_cpu_isas()) {
        if (!cpu_supports(isa)) continue;
        set_max_cpu_isa(isa);
        const std::vector<std::string> lines = verbose_lines_of_every_op(Device::CPU);
        ASSERT_FALSE(lines.empty());
        for (const std::string &line : lines)
            EXPECT_EQ(split(line, ',')[4], std::string("cpu:") + isa_name(isa)) << line;
    }
    set_max_cpu_isa(saved);
}

// The kernels a training forward, then a training backward (full mask), of shape s ran.
struct TrainingKernels {
    std::vector<std::string> forward, backward;
    bool operator==(const TrainingKernels &o) const {
        return forward == o.forward && backward == o.backward;
    }
};
std::ostream &operator<<(std::ostream &os, const TrainingKernels &k) {
    os << "forward:";
    for (const std::string &s : k.forward) os << " " << s;
    os << "; backward:";
    for (const std::string &s : k.backward) os << " " << s;
    return os;
}

// The kernels a training forward and backward run (`residual`: forward_add and backward_add).
TrainingKernels training_kernels(const Shape &s, const std::string &layout = "nchw",
                                 bool residual = false) {
    std::mt19937 rng(11);
    TypedTensor x(DType::float32, s, layout), y(DType::float32, s, layout);
    TypedTensor dy(DType::float32, s, layout), dx(DType::float32, s, layout);
    TypedTensor z(DType::float32, s, layout), dz(DType::float32, s, layout);
    x.randomize(rng);
    dy.randomize(rng);
    z.randomize(rng);
    BatchNorm2d bn(s.c);
    auto kernels_of = [](const std::vector<std::string> &lines) {
        std::vector<std::string> kernels;
        for (const std::string &line : lines) {
            const std::string k = split(line, ',')[3];
            kernels.push_back(k.substr(0, k.find("_f32")));
        }
        return kernels;
    };
    TrainingKernels k;
    k.forward = kernels_of(verbose_lines_of([&] {
        residual ? bn.forward_add(x.view(), z.view(), y.view()) : bn.forward(x.view(), y.view());
    }));
    k.backward = kernels_of(verbose_lines_of([&] {
        residual ? bn.backward_add(dy.view(), dx.view(), dz.view())
                 : bn.backward(dy.view(), dx.view());
    }));
    return k;
}

const std::vector<std::string> kFusedForward = {"train_fwd"}, kFusedBackward = {"train_bwd"};
const std::vector<std::string> kSplitForward = {"split_stats", "sync_merge", "eval_fwd"};
const std::vector<std::string> kSplitBackward = {"split_bwd_sums", "sync_bwd_input"};
const TrainingKernels kFused{kFusedForward, kFusedBackward};
const TrainingKernels kSplit{kSplitForward, kSplitBackward};

// The smallest batch of (16, 1, plane) samples whose training calls (forward: x and y,
// forward_add also z; backward: x, grad_out and grad_input, backward_add's ReLU also y) do not
// fit the cache rule's bytes, forward's nor backward's: beyond it, the plane decides.
int64_t batch_beyond_cache(int64_t plane) {
    const int64_t sample_bytes = 2 * 16 * plane * int64_t(sizeof(float));  // the fewest tensors
    return std::max(split_max_cache_bytes(false), split_max_cache_bytes(true)) / sample_bytes + 1;
}

TEST(Strategy, AutomaticSplitsPlanesUpToTheMachineFilesThresholds) {
    StrategyGuard automatic(CpuStrategy::automatic);
    // A plane of exactly a threshold splits (a 1 x limit plane), one value more does not; with
    // 16 channels or more: fewer run fused (the split kernels parallelize over channels only).
    // Batches too large for the cache rule (the next test).
    for (bool backward : {false, true}) {
        SCOPED_TRACE(backward ? "backward" : "forward");
        const int64_t limit = split_max_plane(backward);
        auto of = [&](const TrainingKernels &k) { return backward ? k.backward : k.forward; };
        if (limit > 0) {
            EXPECT_EQ(of(training_kernels({batch_beyond_cache(limit), 16, 1, limit})), of(kSplit));
            EXPECT_EQ(of(training_kernels({2, 15, 1, limit})), of(kFused));
        }
        EXPECT_EQ(of(training_kernels({batch_beyond_cache(limit + 1), 16, 1, limit + 1})),
                  of(kFused));
    }
}

// Whatever the plane, a call whose tensors fit split_max_cache_bytes() splits (its pointwise
// pass reads x from the cache); one value more per plane does not. Forward moves 2 tensors
// (x, y), backward 3 (x, grad_out, grad_input).
TEST(Strategy, AutomaticSplitsCallsThatFitTheCache) {
    StrategyGuard automatic(CpuStrategy::automatic);
    for (bool backward : {false, true}) {
        SCOPED_TRACE(backward ? "backward" : "forward");
        const int64_t tensors = backward ? 3 : 2, batch = 2, channels = 16;
        const int64_t plane =
            split_max_cache_bytes(backward) / (tensors * batch * channels * int64_t(sizeof(float)));
        // The rule off (0), or a plane the plane rule splits anyway: nothing to tell apart.
        if (plane <= split_max_plane(backward)) continue;
        auto of = [&](const TrainingKernels &k) { return backward ? k.backward : k.forward; };
        EXPECT_EQ(of(training_kernels({batch, channels, 1, plane})), of(kSplit));
        if (backward) EXPECT_EQ(last_cpu_strategy_used(), CpuStrategy::split);
        EXPECT_EQ(of(training_kernels({batch, channels, 1, plane + 1})), of(kFused));
        EXPECT_EQ(of(training_kernels({batch, channels - 1, 1, plane})), of(kFused));
    }
}

// forward_add has its own threshold (its fused kernel's epilogue is one general loop);
// backward_add runs the residual's gradient, then backward by backward's threshold. What ran is
// what last_cpu_strategy_used() reports.
TEST(Strategy, ForwardAddHasAThresholdOfItsOwn) {
    StrategyGuard automatic(CpuStrategy::automatic);
    const int64_t limit = split_max_plane(false, true);
    EXPECT_EQ(split_max_plane(true, true), split_max_plane(true));
    auto after_residual = [](std::vector<std::string> k) {  // the residual's gradient first
        k.insert(k.begin(), "eval_bwd_input");
        return k;
    };
    for (int64_t plane : {limit, limit + 1}) {
        if (plane == 0) continue;
        SCOPED_TRACE("plane " + std::to_string(plane));
        const bool split = plane <= limit;
        const TrainingKernels k =
            training_kernels({batch_beyond_cache(plane), 16, 1, plane}, "nchw", true);
        EXPECT_EQ(k.forward, split ? kSplitForward : kFusedForward);
        const bool split_backward = plane <= split_max_plane(true);
        EXPECT_EQ(k.backward, after_residual(split_backward ? kSplitBackward : kFusedBackward));
        EXPECT_EQ(last_cpu_strategy_used(),
                  split_backward ? CpuStrategy::split : CpuStrategy::fused);
    }
}

TEST(Strategy, SettingOverridesTheThresholds) {
    {
        StrategyGuard split(CpuStrategy::split);
        EXPECT_EQ(cpu_strategy(), CpuStrategy::split);
        EXPECT_EQ(training_kernels({2, 3, 5, 7}), kSplit);
        EXPECT_EQ(training_kernels({2, 3, 40, 41}), kSplit);
    }
    StrategyGuard fused(CpuStrategy::fused);
    EXPECT_EQ(training_kernels({2, 16, 5, 7}), kFused);
}

TEST(Strategy, LayoutsWithoutSplitKernelsRunTheirOwn) {
    StrategyGuard split(CpuStrategy::split);
    EXPECT_EQ(training_kernels({2, 16, 5, 7}, "nhwc"), kFused);
    EXPECT_EQ(training_kernels({2, 16, 5, 7}, "padded"), kFused);
}

TEST(Strategy, ValueOutsideTheEnumIsRefused) {
    StrategyGuard split(CpuStrategy::split);
    EXPECT_THROW(set_cpu_strategy(static_cast<CpuStrategy>(3)), Error);
    EXPECT_EQ(cpu_strategy(), CpuStrategy::split) << "a refused value changes nothing";
}

TEST(Variants, QuietWhenVerboseIsOff) {
    ASSERT_FALSE(verbose());
    std::mt19937 rng(3);
    const Shape s{2, 3, 4, 5};
    std::vector<float> x = random_vector(rng, s.numel()), y(s.numel());
    BatchNorm2d bn(s.c);
    ::testing::internal::CaptureStderr();
    bn.forward(view(x, s), view(y, s));
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

}  // namespace
}  // namespace bn2d::test
