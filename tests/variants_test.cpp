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
