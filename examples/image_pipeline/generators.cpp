// A small convolutional image pipeline with batch norm as interior stages, written with the
// installed bn2d::halide package (the algorithm and its stage schedules):
//
//   RGB image -> conv 3x3 (3 -> 8) -> batchnorm -> ReLU -> conv 3x3 (8 -> 3) -> batchnorm
//             -> ReLU -> RGB image
//
// Two ways to build it, for main.cpp to compare:
//   conv_bn_relu_x2  the whole pipeline as one Halide pipeline: both batch norms are inlined
//                    into their consumers, the intermediates are line-buffered per strip of
//                    output rows, nothing but the output image is written to memory.
//   conv3x3, relu_to_u8  the stages apart, so an app can run them with the bn2d module's
//                    batch norm (an AOT kernel of its own) in between: five passes over memory.
// Tensors are planar (x, y, c), as an NCHW image of batch 1; weights are PyTorch's
// [C_out, C_in, 3, 3] memory order, so (kx, ky, c_in, c_out) here. Convolutions pad with zeros
// (PyTorch's padding=1).
#include <bn2d_algorithm.h>
#include <stage_schedules.h>

#include "Halide.h"

namespace {

using namespace Halide;

constexpr int kHidden = 8;      // channels between the two convolutions
constexpr int kStripRows = 32;  // output rows per parallel task

// out(x, y, co) = bias(co) + sum over (kx, ky, ci) of w(kx, ky, ci, co) * in(x + kx - 1, y + ky - 1, ci)
struct Conv {
    Func f;
    RDom r;  // (kx, ky, ci)

    // Computed at `at`, vectorized along x, the taps and input channels outside the x loop:
    // each tap is a pass of multiply-adds over a row held in L1. (Measured: keeping the sums
    // of all output channels in registers across the taps, the taps unrolled, was 2x slower
    // here: the unrolled loop spills.)
    void schedule(const LoopLevel &at, const Var &x, const Var &y, int lanes) {
        f.compute_at(at).vectorize(x, lanes, TailStrategy::GuardWithIf);
        f.update().reorder(x, r.x, r.y, r.z, y).vectorize(x, lanes, TailStrategy::GuardWithIf);
    }
};

Conv conv3x3(Func in, Expr in_channels, Func weights, Func bias, const std::string &name,
             const Var &x, const Var &y, const Var &c) {
    Conv conv{Func(name), RDom(0, 3, 0, 3, 0, in_channels, name + "_r")};
    const RDom &r = conv.r;
    conv.f(x, y, c) = bias(c);
    conv.f(x, y, c) += weights(r.x, r.y, r.z, c) * in(x + r.x - 1, y + r.y - 1, r.z);
    return conv;
}

// Strips of kStripRows output rows in parallel, x vectorized. Returns the strip and row loop
// levels: intermediates are stored per strip and computed per row (line buffering).
struct Strips {
    LoopLevel strip, row;
};
Strips schedule_strips(Func output, const Var &x, const Var &y, const Var &c, int lanes) {
    Var yo("yo"), yi("yi");
    output.reorder(x, c, y)
        .split(y, yo, yi, kStripRows, TailStrategy::GuardWithIf)
        .parallel(yo)
        .vectorize(x, lanes, TailStrategy::GuardWithIf);
    return {LoopLevel(output, yo), LoopLevel(output, yi)};
}

// A zero-padded input stored in rows: see ConvBnReluX2's schedule.
void line_buffer(Func f, const Strips &s, const Var &x, int lanes) {
    f.store_at(s.strip).compute_at(s.row).vectorize(x, lanes, TailStrategy::GuardWithIf);
}

class ConvBnReluX2 : public Generator<ConvBnReluX2> {
public:
    Input<Buffer<uint8_t, 3>> input{"input"};
    Input<Buffer<float, 4>> w1{"w1"};
    Input<Buffer<float, 1>> b1{"b1"};
    Input<Buffer<float, 1>> bn1_weight{"bn1_weight"}, bn1_bias{"bn1_bias"},
        bn1_running_mean{"bn1_running_mean"}, bn1_running_var{"bn1_running_var"};
    Input<Buffer<float, 4>> w2{"w2"};
    Input<Buffer<float, 1>> b2{"b2"};
    Input<Buffer<float, 1>> bn2_weight{"bn2_weight"}, bn2_bias{"bn2_bias"},
        bn2_running_mean{"bn2_running_mean"}, bn2_running_var{"bn2_running_var"};
    Input<double> eps{"eps"};
    Output<Buffer<uint8_t, 3>> output{"output"};

    void generate() {
        Var x("x"), y("y"), c("c");
        bn2d::Vars v;
        Expr width = input.dim(0).extent(), height = input.dim(1).extent();

        Func rgb("rgb");
        rgb(x, y, c) = cast<float>(input(x, y, c)) / 255.0f;
        Func padded =
            BoundaryConditions::constant_exterior(rgb, 0.0f, {{0, width}, {0, height}, {0, 3}});
        Conv conv1 = conv3x3(padded, 3, w1, b1, "conv1", x, y, c);

        // Batch norm 1, from the installed algorithm: the conv output as its input.
        Func conv1_4d("conv1_4d");
        conv1_4d(v.w, v.h, v.c, v.n) = conv1.f(v.w, v.h, v.c);
        const Expr C1 = w1.dim(3).extent(), C2 = w2.dim(3).extent();
        bn2d::EvalForward bn1 =
            bn2d::eval_forward(conv1_4d, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var,
                               eps, bn2d::Extents{width, height, C1, 1, Float(64), "bn1_"}, v);
        // The activation, zero outside the image (the second convolution's padding). conv1 is
        // computed over that one-pixel border too, so no load here needs a clamped index.
        Func act1("act1");
        Expr inside = x >= 0 && x < width && y >= 0 && y < height;
        act1(x, y, c) = select(inside, max(bn1.y(x, y, c, 0), 0.0f), 0.0f);
        Conv conv2 = conv3x3(act1, C1, w2, b2, "conv2", x, y, c);
        Func conv2_4d("conv2_4d");
        conv2_4d(v.w, v.h, v.c, v.n) = conv2.f(v.w, v.h, v.c);
        bn2d::EvalForward bn2 =
            bn2d::eval_forward(conv2_4d, bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var,
                               eps, bn2d::Extents{width, height, C2, 1, Float(64), "bn2_"}, v);
        output(x, y, c) =
            cast<uint8_t>(clamp(max(bn2.y(x, y, c, 0), 0.0f) * 255.0f + 0.5f, 0.0f, 255.0f));

        // Estimates: the shipped photograph.
        input.set_estimates({{0, 451}, {0, 300}, {0, 3}});
        output.set_estimates({{0, 451}, {0, 300}, {0, 3}});
        w1.set_estimates({{0, 3}, {0, 3}, {0, 3}, {0, 8}});
        w2.set_estimates({{0, 3}, {0, 3}, {0, 8}, {0, 3}});
        for (auto *b : {&b1, &bn1_weight, &bn1_bias, &bn1_running_mean, &bn1_running_var})
            b->set_estimates({{0, 8}});
        for (auto *b : {&b2, &bn2_weight, &bn2_bias, &bn2_running_mean, &bn2_running_var})
            b->set_estimates({{0, 3}});
        eps.set_estimate(1e-5);

        // Schedule: strips of kStripRows output rows in parallel, line-buffered inside a strip.
        // Each output row needs three rows of act1, which needs three rows of conv1's input:
        // every intermediate is stored per strip but computed one row at a time, as the rows
        // below need it (Halide's sliding window: a row is computed once, and the buffers fold
        // to a few rows), so they stay in L1/L2 and only the output image is written to memory.
        // Both batch norms are inlined into their consumers (the stage schedules' default
        // placement), their per-channel scales computed once. The zero-padded inputs of the
        // convolutions are stored rows too: inlined, the padding's clamped indices became
        // gathers in 2/3 of the taps (measured 10x slower). Whole-strip buffers of every
        // intermediate were slower too: over glibc's mmap threshold, mapped and unmapped per
        // strip (Halide's profiler: 9-13% in halide_free, and the page faults after it).
        const int lanes = natural_vector_size<float>();
        bn2d::stage::schedule_eval_forward(bn1, v);
        bn2d::stage::schedule_eval_forward(bn2, v);
        output.bound(c, 0, 3).unroll(c);
        const Strips s = schedule_strips(output, x, y, c, lanes);
        line_buffer(padded, s, x, lanes);
        conv1.schedule(s.row, x, y, lanes);
        conv1.f.store_at(s.strip);
        line_buffer(act1, s, x, lanes);
        conv2.schedule(s.row, x, y, lanes);
        conv2.f.store_at(s.strip);  // one allocation per strip, not per row
    }
};

// One convolution as a separately compiled stage. relu_input applies a ReLU to its input (the
// previous block's activation, which the unfused app does not materialize on its own);
// u8_input reads the 8-bit image.
class Conv3x3Stage : public Generator<Conv3x3Stage> {
public:
    GeneratorParam<bool> u8_input{"u8_input", false};
    GeneratorParam<bool> relu_input{"relu_input", false};
    GeneratorParam<int> in_channels{"in_channels", 3};
    GeneratorParam<int> out_channels{"out_channels", kHidden};
    Input<Buffer<void, 3>> input{"input"};
    Input<Buffer<float, 4>> weights{"weights"};
    Input<Buffer<float, 1>> bias{"bias"};
    Output<Buffer<float, 3>> output{"output"};

    void configure() { input.set_type(u8_input ? UInt(8) : Float(32)); }

    void generate() {
        Var x("x"), y("y"), c("c");
        Expr width = input.dim(0).extent(), height = input.dim(1).extent();
        Func in("in");
        in(x, y, c) = u8_input ? cast<float>(input(x, y, c)) / 255.0f : input(x, y, c);
        if (relu_input) {
            Func relu("relu");
            relu(x, y, c) = max(in(x, y, c), 0.0f);
            in = relu;
        }
        Func padded = BoundaryConditions::constant_exterior(
            in, 0.0f, {{0, width}, {0, height}, {0, in_channels}});
        input.dim(2).set_bounds(0, in_channels);
        weights.dim(2).set_bounds(0, in_channels).dim(3).set_bounds(0, out_channels);
        output.dim(2).set_bounds(0, out_channels);
        Conv conv = conv3x3(padded, in_channels, weights, bias, "conv", x, y, c);
        output(x, y, c) = conv.f(x, y, c);

        input.set_estimates({{0, 451}, {0, 300}, {0, 8}});
        output.set_estimates({{0, 451}, {0, 300}, {0, 8}});
        weights.set_estimates({{0, 3}, {0, 3}, {0, 8}, {0, 8}});
        bias.set_estimates({{0, 8}});

        // The fused pipeline's strips and convolution schedule, so the two differ only in fusion.
        const int lanes = natural_vector_size<float>();
        const Strips s = schedule_strips(output, x, y, c, lanes);
        line_buffer(padded, s, x, lanes);
        conv.schedule(s.row, x, y, lanes);
        conv.f.store_at(s.strip);
    }
};

// The last ReLU and the conversion to 8 bits, as a stage of its own.
class ReluToU8 : public Generator<ReluToU8> {
public:
    Input<Buffer<float, 3>> input{"input"};
    Output<Buffer<uint8_t, 3>> output{"output"};

    void generate() {
        Var x("x"), y("y"), c("c");
        output(x, y, c) =
            cast<uint8_t>(clamp(max(input(x, y, c), 0.0f) * 255.0f + 0.5f, 0.0f, 255.0f));
        input.set_estimates({{0, 451}, {0, 300}, {0, 3}});
        output.set_estimates({{0, 451}, {0, 300}, {0, 3}});
        output.parallel(c).vectorize(x, natural_vector_size<float>(), TailStrategy::GuardWithIf);
    }
};

}  // namespace

HALIDE_REGISTER_GENERATOR(ConvBnReluX2, conv_bn_relu_x2)
HALIDE_REGISTER_GENERATOR(Conv3x3Stage, conv3x3)
HALIDE_REGISTER_GENERATOR(ReluToU8, relu_to_u8)
