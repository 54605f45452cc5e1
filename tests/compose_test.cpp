// The algorithm as a stage of a caller's Halide pipeline: two batch norms (training forward,
// then eval forward with a ReLU between) composed in one pipeline, JIT-compiled, against the
// float64 reference. Every Func carries its batch norm's prefix, so the two never collide.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "Halide.h"
#include "bn2d_algorithm.h"
#include "common.h"
#include "stage_schedules.h"

namespace {

using namespace Halide;
using bn2d::test::Shape;

Buffer<float> to_buffer(const std::vector<float> &v, const Shape &s) {
    Buffer<float> b(s.w, s.h, s.c, s.n);  // x(w, h, c, n): NCHW, W innermost
    for (int64_t i = 0; i < s.numel(); ++i) b.data()[i] = v[i];
    return b;
}

Buffer<float> to_buffer(const std::vector<double> &v) {
    Buffer<float> b(static_cast<int>(v.size()));
    for (size_t i = 0; i < v.size(); ++i) b(static_cast<int>(i)) = static_cast<float>(v[i]);
    return b;
}

// All Func names reachable from the outputs.
std::set<std::string> func_names(const Pipeline &p) {
    std::set<std::string> names;
    std::vector<Internal::Function> stack;
    for (const Func &f : p.outputs()) stack.push_back(f.function());
    while (!stack.empty()) {
        Internal::Function f = stack.back();
        stack.pop_back();
        if (!names.insert(f.name()).second) continue;
        for (const auto &[name, callee] : Internal::find_direct_calls(f)) stack.push_back(callee);
    }
    return names;
}

TEST(Compose, TwoBatchNormsInOnePipeline) {
    const Shape s{3, 4, 5, 6};
    std::mt19937 rng(31);
    std::vector<float> x = bn2d::test::random_vector(rng, s.numel(), 0.5f, 2.0f);
    bn2d::reference::Module ref1(s.c), ref2(s.c);
    for (auto *r : {&ref1, &ref2}) {
        std::vector<float> w = bn2d::test::random_vector(rng, s.c, 1.0f, 0.3f);
        std::vector<float> b = bn2d::test::random_vector(rng, s.c, 0.0f, 0.5f);
        std::vector<float> m = bn2d::test::random_vector(rng, s.c, 0.2f, 0.1f);
        r->weight.assign(w.begin(), w.end());
        r->bias.assign(b.begin(), b.end());
        r->running_mean.assign(m.begin(), m.end());
        for (double &var : r->running_var) var = 0.5 + double(rng() % 100) / 100.0;
    }
    ref2.training = false;

    // The caller's pipeline: input -> bn1 (training) -> ReLU -> bn2 (eval).
    bn2d::Vars v;
    Buffer<float> xin = to_buffer(x, s);
    Func input("input");
    input(v.w, v.h, v.c, v.n) = xin(v.w, v.h, v.c, v.n);
    auto extents = [&](const std::string &prefix) {
        return bn2d::Extents{xin.dim(0).extent(), xin.dim(1).extent(), xin.dim(2).extent(),
                             xin.dim(3).extent(), Float(64),           prefix};
    };
    Buffer<float> w1 = to_buffer(ref1.weight), b1 = to_buffer(ref1.bias),
                  rm1 = to_buffer(ref1.running_mean), rv1 = to_buffer(ref1.running_var);
    Buffer<float> w2 = to_buffer(ref2.weight), b2 = to_buffer(ref2.bias),
                  rm2 = to_buffer(ref2.running_mean), rv2 = to_buffer(ref2.running_var);
    bn2d::TrainForward bn1 = bn2d::train_forward(input, Func(w1), Func(b1), Func(rm1), Func(rv1),
                                                 1e-5f, 0.1f, extents("bn1_"), v);
    Func relu("relu");
    relu(v.w, v.h, v.c, v.n) = max(bn1.y(v.w, v.h, v.c, v.n), 0.0f);
    bn2d::EvalForward bn2 = bn2d::eval_forward(relu, Func(w2), Func(b2), Func(rm2), Func(rv2),
                                               1e-5f, extents("bn2_"), v);
    // A reduction must not be recomputed per element: compute the sums once.
    bn1.stats.s.sums.compute_root();
    Pipeline p({bn2.y, bn1.running_mean_out, bn1.running_var_out});

    const std::set<std::string> names = func_names(p);
    for (const char *f : {"bn1_y", "bn1_stat_sums", "bn1_batch_mean", "bn1_running_var_out",
                          "bn2_y", "bn2_scale", "relu", "input"})
        EXPECT_TRUE(names.count(f)) << "no Func named " << f;
    for (const std::string &n : names)
        EXPECT_EQ(n.find('$'), std::string::npos) << "Halide had to rename " << n;

    Buffer<float> y(s.w, s.h, s.c, s.n), rm(s.c), rv(s.c);
    y.fill(std::numeric_limits<float>::quiet_NaN());
    p.realize({y, rm, rv});

    // Reference: the same composition in float64.
    std::vector<double> y1 = ref1.forward(s, x);
    for (double &e : y1) e = std::max(e, 0.0);
    std::vector<double> y2 = ref2.forward(s, y1);
    std::vector<float> got(y.data(), y.data() + s.numel());
    EXPECT_TRUE(bn2d::test::all_close(got, y2, 2e-5, 2e-5,
                                      [&](int64_t i) { return bn2d::test::where(s, i); }));
    std::vector<float> got_rm(rm.data(), rm.data() + s.c), got_rv(rv.data(), rv.data() + s.c);
    EXPECT_TRUE(bn2d::test::all_close(got_rm, ref1.running_mean, 1e-6, 1e-5));
    EXPECT_TRUE(bn2d::test::all_close(got_rv, ref1.running_var, 1e-6, 1e-5));
}

// The stage schedules (bn2d::halide) place a training batch norm inside a caller's pipeline:
// its output inlined into the consumer (a ReLU), stored per row of the consumer, or as a root
// stage; the statistics always their own stage. Every placement gives the reference's result.
TEST(Compose, StageSchedulesPlaceTheBatchNormInsideAPipeline) {
    const Shape s{2, 5, 7, 37};
    std::mt19937 rng(std::random_device{}());
    const std::vector<float> x = bn2d::test::random_vector(rng, s.numel(), 3.0f, 2.0f);
    bn2d::reference::Module ref(s.c);
    std::vector<double> y_ref = ref.forward(s, x);
    for (double &e : y_ref) e = std::max(e, 0.0);

    for (int placement = 0; placement < 3; ++placement) {
        bn2d::Vars v;
        Buffer<float> xin = to_buffer(x, s);
        Buffer<float> ones(s.c), zeros(s.c);
        ones.fill(1.0f);
        zeros.fill(0.0f);
        bn2d::Extents e{xin.dim(0).extent(), xin.dim(1).extent(), xin.dim(2).extent(),
                        xin.dim(3).extent(), Float(64),           "bn_"};
        bn2d::TrainForward bn = bn2d::train_forward(Func(xin), Func(ones), Func(zeros), Func(zeros),
                                                    Func(ones), Expr(1e-5), Expr(0.1), e, v);
        Func relu("relu");
        relu(v.w, v.h, v.c, v.n) = max(bn.y(v.w, v.h, v.c, v.n), 0.0f);
        relu.parallel(v.n).vectorize(v.w, 8, TailStrategy::GuardWithIf);
        bn2d::stage::Placement where;
        where.y_at = placement == 0   ? LoopLevel::inlined()
                     : placement == 1 ? LoopLevel(relu, v.h)
                                      : LoopLevel::root();
        bn2d::stage::schedule_train_forward(bn, v, where);

        Buffer<float> y(s.w, s.h, s.c, s.n);
        y.fill(std::numeric_limits<float>::quiet_NaN());
        relu.realize(y);
        std::vector<float> got(y.data(), y.data() + s.numel());
        EXPECT_TRUE(bn2d::test::all_close(got, y_ref, 2e-5, 2e-5,
                                          [&](int64_t i) { return bn2d::test::where(s, i); }))
            << "placement " << placement;
    }
}

// Training backward as a stage: the gradient sums their own stage, grad_input inlined into a
// consumer (here a copy, as a caller's next backward stage would read it) or computed at root.
TEST(Compose, StageSchedulesPlaceTheBackward) {
    const Shape s{3, 4, 5, 19};
    std::mt19937 rng(std::random_device{}());
    const std::vector<float> x = bn2d::test::random_vector(rng, s.numel(), 1.0f, 2.0f);
    const std::vector<float> dy = bn2d::test::random_vector(rng, s.numel());
    bn2d::reference::Module ref(s.c);
    for (double &w : ref.weight) w = 0.5 + double(rng() % 100) / 100.0;
    ref.forward(s, x);
    const bn2d::reference::Module::Grads want = ref.backward(s, x, dy);

    for (bool root : {false, true}) {
        bn2d::Vars v;
        Buffer<float> xb = to_buffer(x, s), dyb = to_buffer(dy, s);
        Buffer<float> mean = to_buffer(ref.saved_mean), invstd = to_buffer(ref.saved_invstd),
                      weight = to_buffer(ref.weight);
        bn2d::Extents e{xb.dim(0).extent(), xb.dim(1).extent(), xb.dim(2).extent(),
                        xb.dim(3).extent(), Float(64),          "bn_"};
        bn2d::Backward bwd =
            bn2d::backward({true, true, true}, Func(xb), Func(dyb), Func(mean), Func(invstd),
                           Expr(1e-5), Func(weight), Func(), Func(), e, v);
        Func next("next_stage");
        next(v.w, v.h, v.c, v.n) = bwd.grad_input(v.w, v.h, v.c, v.n);
        bn2d::stage::Placement where;
        where.y_at = root ? LoopLevel::root() : LoopLevel::inlined();
        bn2d::stage::schedule_backward(bwd, v, where);

        Buffer<float> dx(s.w, s.h, s.c, s.n), dw(s.c), db(s.c);
        dx.fill(std::numeric_limits<float>::quiet_NaN());
        Pipeline({next, bwd.grad_weight, bwd.grad_bias}).realize({dx, dw, db});
        std::vector<float> got(dx.data(), dx.data() + s.numel());
        EXPECT_TRUE(bn2d::test::all_close(got, want.input, 2e-5, 2e-5, [&](int64_t i) {
            return bn2d::test::where(s, i);
        })) << (root ? "root" : "inlined");
        std::vector<float> got_dw(dw.data(), dw.data() + s.c), got_db(db.data(), db.data() + s.c);
        EXPECT_TRUE(bn2d::test::all_close(got_dw, want.weight, 1e-4, 1e-5));
        EXPECT_TRUE(bn2d::test::all_close(got_db, want.bias, 1e-4, 1e-5));
    }
}

// A pipeline passes the fused epilogue's switches as constants: y = relu(bn(x) + z) in a
// training forward, then the backward through the ReLU's mask read from that y.
TEST(Compose, relu_epilogue_with_constant_switches) {
    const Shape s{2, 3, 5, 7};
    std::mt19937 rng(41);
    std::vector<float> x = bn2d::test::random_vector(rng, s.numel(), 0.5f, 2.0f);
    std::vector<float> z = bn2d::test::random_vector(rng, s.numel());
    std::vector<float> dy = bn2d::test::random_vector(rng, s.numel());
    bn2d::reference::Module ref(s.c);
    std::vector<float> w = bn2d::test::random_vector(rng, s.c, 1.0f, 0.3f);
    std::vector<float> b = bn2d::test::random_vector(rng, s.c, 0.0f, 0.5f);
    ref.weight.assign(w.begin(), w.end());
    ref.bias.assign(b.begin(), b.end());

    bn2d::Vars v;
    Buffer<float> xb = to_buffer(x, s), zb = to_buffer(z, s), dyb = to_buffer(dy, s);
    Buffer<float> wb = to_buffer(ref.weight), bb = to_buffer(ref.bias),
                  rmb = to_buffer(ref.running_mean), rvb = to_buffer(ref.running_var);
    auto extents = [&](const std::string &prefix) {
        return bn2d::Extents{Expr(int(s.w)), Expr(int(s.h)), Expr(int(s.c)),
                             Expr(int(s.n)), Float(64),      prefix};
    };
    bn2d::TrainForward fwd =
        bn2d::train_forward(Func(xb), Func(wb), Func(bb), Func(rmb), Func(rvb), 1e-5f, 0.1f,
                            extents("fwd_"), v, bn2d::Epilogue{Func(zb), Expr(), cast<bool>(1)});
    fwd.stats.s.sums.compute_root();
    Buffer<float> y(s.w, s.h, s.c, s.n), mean(s.c), invstd(s.c), rm(s.c), rv(s.c);
    y.fill(std::numeric_limits<float>::quiet_NaN());
    Pipeline({fwd.y, fwd.saved_mean, fwd.saved_invstd, fwd.running_mean_out, fwd.running_var_out})
        .realize({y, mean, invstd, rm, rv});
    std::vector<double> want = ref.forward(s, x);
    for (size_t i = 0; i < want.size(); ++i) want[i] = std::max(want[i] + z[i], 0.0);
    const std::vector<float> got(y.data(), y.data() + s.numel());
    EXPECT_TRUE(bn2d::test::all_close(got, want, 2e-5, 2e-5,
                                      [&](int64_t i) { return "y " + bn2d::test::where(s, i); }));

    bn2d::Backward bwd = bn2d::backward({true, true, true}, Func(xb), Func(dyb), Func(mean),
                                        Func(invstd), 1e-5f, Func(wb), Func(), Func(),
                                        extents("bwd_"), v, bn2d::ReluGrad{Func(y), Expr()});
    bwd.sums.sums.compute_root();
    Buffer<float> dx(s.w, s.h, s.c, s.n), dw(s.c), db(s.c);
    dx.fill(std::numeric_limits<float>::quiet_NaN());
    Pipeline({bwd.grad_input, bwd.grad_weight, bwd.grad_bias}).realize({dx, dw, db});
    std::vector<double> incoming(dy.begin(), dy.end());
    int masked = 0;
    for (size_t i = 0; i < incoming.size(); ++i)
        if (got[i] <= 0) incoming[i] = 0, ++masked;
    EXPECT_GT(masked, 0);  // the ReLU clipped something: the mask is exercised
    const bn2d::reference::Module::Grads g = ref.backward(s, x, incoming);
    EXPECT_TRUE(bn2d::test::all_close(std::vector<float>(dx.data(), dx.data() + s.numel()), g.input,
                                      1e-5, 1e-5,
                                      [&](int64_t i) { return "dx " + bn2d::test::where(s, i); }));
    EXPECT_TRUE(bn2d::test::all_close(std::vector<float>(dw.data(), dw.data() + s.c), g.weight,
                                      1e-4, 1e-5));
    EXPECT_TRUE(
        bn2d::test::all_close(std::vector<float>(db.data(), db.data() + s.c), g.bias, 1e-4, 1e-5));
}

// Halide renames a second Func of an existing name ("same_y$1"): the stage is then unreadable in
// .stmt files and profiles and unaddressable by name. A prefix per batch norm avoids that.
TEST(Compose, PrefixesKeepNamesReadable) {
    bn2d::Vars v;
    Func a("a"), b("b"), stat("stat");
    a(v.w, v.h, v.c, v.n) = cast<float>(v.w + v.c);
    b(v.w, v.h, v.c, v.n) = cast<float>(v.h - v.n);
    stat(v.c) = cast<float>(v.c) + 1.0f;
    bn2d::Extents e{8, 4, 2, 2, Float(64), "same_"};
    bn2d::EvalForward first = bn2d::eval_forward(a, Func(), Func(), stat, stat, 1e-5f, e, v);
    bn2d::EvalForward second = bn2d::eval_forward(b, Func(), Func(), stat, stat, 1e-5f, e, v);
    EXPECT_EQ(first.y.name(), "same_y");
    EXPECT_NE(second.y.name(), "same_y");  // renamed by Halide
    e.prefix = "other_";
    bn2d::EvalForward third = bn2d::eval_forward(b, Func(), Func(), stat, stat, 1e-5f, e, v);
    EXPECT_NE(third.y.name(), first.y.name());
    EXPECT_EQ(third.y.name(), "other_y");
}

}  // namespace
