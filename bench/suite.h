// The benchmark suite, shared by the CPU and GPU benchmarks: shapes, ops and the bytes each op
// must move (each input read once, each output written once).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bn2d::bench {

struct Shape {
    int64_t n, c, h, w;
    int64_t numel() const { return n * c * h * w; }
    std::string name() const {
        return std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" +
               std::to_string(w);
    }
};

inline const std::vector<Shape> &suite_shapes() {
    static const std::vector<Shape> shapes = {{20, 100, 35, 45}, {32, 64, 112, 112},
                                              {32, 256, 56, 56}, {32, 512, 28, 28},
                                              {32, 2048, 7, 7},  {1, 3, 1080, 1920}};
    return shapes;
}

enum class Op { TrainFwd, EvalFwd, Bwd };
constexpr Op kOps[] = {Op::TrainFwd, Op::EvalFwd, Op::Bwd};

inline const char *op_name(Op op) {
    return op == Op::TrainFwd ? "train_fwd" : op == Op::EvalFwd ? "eval_fwd" : "bwd";
}

// Forward: read x, write y. Backward: read x and dy, write dx (parameter gradients are C floats).
inline int64_t op_bytes(Op op, const Shape &s) {
    return (op == Op::Bwd ? 3 : 2) * s.numel() * int64_t(sizeof(float));
}

}  // namespace bn2d::bench
