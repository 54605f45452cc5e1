// Modules on several threads at once, while another thread changes the worker-thread count:
// every thread's results must be bitwise those of the same steps run
// alone. Built and run under ThreadSanitizer in CI (scripts/sanitizers.sh), where a data race
// in the runtime (settings, error capture, dispatch) or in Halide's thread pool is reported.
#include <atomic>
#include <thread>

#include "common.h"

namespace bn2d::test {
namespace {

struct Steps {
    std::vector<float> y, dx, weight_grad, running_var;
    bool operator==(const Steps &o) const {
        return y == o.y && dx == o.dx && weight_grad == o.weight_grad &&
               running_var == o.running_var;
    }
};

// Three training steps and an eval forward of one module on one shape.
Steps run_steps(const Shape &s, const std::vector<float> &x, const std::vector<float> &dy) {
    BatchNorm2d bn(s.c);
    std::vector<float> xc = x, dyc = dy;
    Steps r{poisoned(s.numel()), poisoned(s.numel()), {}, {}};
    for (int step = 0; step < 3; ++step) {
        bn.forward(view(xc, s), view(r.y, s));
        bn.backward(view(dyc, s), view(r.dx, s));
    }
    bn.eval();
    bn.forward(view(xc, s), view(r.y, s));
    r.weight_grad = to_vector(bn.weight_grad());
    r.running_var = to_vector(bn.running_var());
    return r;
}

TEST(Concurrency, ModulesOnThreadsWhileSettingsChange) {
    // Few channels (parallel inside a channel) and many (parallel over channels).
    const std::vector<Shape> shapes = {Shape{4, 3, 40, 41}, Shape{2, 32, 12, 13},
                                       Shape{3, 1, 64, 70}};
    std::mt19937 rng(5);
    std::vector<std::vector<float>> xs, dys;
    std::vector<Steps> alone;
    for (const Shape &s : shapes) {
        xs.push_back(random_vector(rng, s.numel(), 1.0f, 2.0f));
        dys.push_back(random_vector(rng, s.numel()));
        alone.push_back(run_steps(s, xs.back(), dys.back()));
    }
    std::atomic<bool> done{false};
    std::thread settings([&] {
        for (int i = 0; !done.load(); ++i) {
            set_num_threads(1 + i % 4);
            std::this_thread::yield();
        }
    });
    constexpr int kRounds = 20;
    std::vector<int> mismatches(shapes.size(), 0);
    std::vector<std::thread> workers;
    for (size_t k = 0; k < shapes.size(); ++k)
        workers.emplace_back([&, k] {
            for (int round = 0; round < kRounds; ++round)
                if (!(run_steps(shapes[k], xs[k], dys[k]) == alone[k])) ++mismatches[k];
        });
    for (std::thread &t : workers) t.join();
    done = true;
    settings.join();
    set_num_threads(0);
    for (size_t k = 0; k < shapes.size(); ++k)
        EXPECT_EQ(mismatches[k], 0) << name(shapes[k]) << ": results differ from a run alone";
}

}  // namespace
}  // namespace bn2d::test
