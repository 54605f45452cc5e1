// The benchmark suite, shared by the CPU and GPU benchmarks: shapes (tests/problems.txt), ops and the bytes each op
// must move (each input read once, each output written once).
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bn2d/settings.h"
#include "problems.h"

namespace bn2d::bench {

using problems::Shape;

// The `suite` set of tests/problems.txt.
inline const std::vector<Shape> &suite_shapes() {
    static const std::vector<Shape> shapes = problems::load("suite");
    return shapes;
}

enum class Op { TrainFwd, EvalFwd, Bwd };
constexpr Op kOps[] = {Op::TrainFwd, Op::EvalFwd, Op::Bwd};

inline const char *op_name(Op op) {
    return op == Op::TrainFwd ? "train_fwd" : op == Op::EvalFwd ? "eval_fwd" : "bwd";
}

// Forward: read x, write y. Backward: read x and dy, write dx (parameter gradients are C
// floats), at the tensors' bytes per element.
inline int64_t op_bytes(Op op, const Shape &s, int bytes_per_element = 4) {
    return (op == Op::Bwd ? 3 : 2) * s.numel() * int64_t(bytes_per_element);
}

// What the kernels were built from, in the results' context: which schedule was measured.
inline void add_build_context() {
    const BuildInfo &b = build_info();
    benchmark::AddCustomContext("bn2d_halide_version", b.halide_version);
    benchmark::AddCustomContext("bn2d_schedule_machine", b.schedule_machine);
    benchmark::AddCustomContext("bn2d_cpu_targets", b.cpu_targets);
    benchmark::AddCustomContext("bn2d_cpu_isa_best", b.cpu_isa_best);
    if (!b.cuda_target.empty()) benchmark::AddCustomContext("bn2d_cuda_target", b.cuda_target);
    std::string kernels;
    for (const std::string &k : b.kernels) kernels += (kernels.empty() ? "" : " ") + k;
    benchmark::AddCustomContext("bn2d_kernels", kernels);
}

}  // namespace bn2d::bench
