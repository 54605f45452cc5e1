// The tuner: one run over every kernel of the options, from the defaults to the machine file.
// Its member functions are defined by concern: tuner.cpp (the run's phases, time, progress),
// jit.cpp (compiling), measure.cpp (data, the floor, timing), search.cpp (checking and scoring
// candidates, the search), journal.cpp (the journal's configuration) and report.cpp (the
// machine file and the report).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "Halide.h"
#include "data.h"
#include "jit.h"
#include "journal.h"
#include "kernels.h"
#include "options.h"
#include "schedule_params.h"
#include "stream_floor.h"
#include "timing.h"

namespace bn2d::tune {

class Tuner {
public:
    Tuner(Options o, std::vector<Shape> shapes, Halide::Target target);

    int run();

private:
    // -- compiling (jit.cpp) --
    Compiled compile(const KernelSpec &k, const std::string &params_file,
                     const std::string &autoscheduler = "");
    Kernel compile_one(const KernelSpec &k, const std::string &dtype,
                       const std::string &params_file, const std::string &autoscheduler);

    // -- machine files (tuner.cpp) --
    std::map<std::string, std::string>
    machine_keys(const std::map<std::string, Candidate> &tuned) const;
    std::string write_params(const std::string &kernel, const Candidate &c,
                             const std::string &path);

    // -- data (measure.cpp) --
    Halide::Runtime::Buffer<> &input(const std::string &name, Halide::Type type, int dims,
                                     const Problem &p, const std::string &view);
    Halide::Runtime::Buffer<> wrap(const Memory &m, Halide::Type type, int dims, const Problem &p,
                                   const std::string &view);
    template<typename T>
    void to_device(Halide::Runtime::Buffer<T> &b);

    // Outputs of one compiled kernel on one problem (owned here, poisoned before checked runs).
    struct Outputs {
        std::vector<Memory> memory;
        std::vector<Halide::Runtime::Buffer<>> buffers;
    };
    Outputs make_outputs(const Compiled &compiled, const Problem &p);
    void poison(Outputs &out);
    void call(const Compiled &compiled, const Problem &p, Outputs &outputs);

    // -- the floor (measure.cpp) --
    struct FloorData {
        Memory x, dy, out;
        int64_t floats;
        Halide::Runtime::Buffer<float> bx, bdy, bout;
    };
    FloorData &floor_data(const Problem &p, bool backward);
    void run_floor(const Problem &p, bool backward);
    Halide::Callable &gpu_copy(bool backward);

    // -- evaluating a candidate (search.cpp; scratch() and measure() in measure.cpp) --
    // The kernel state while it is tuned: reference outputs per problem (the default schedule's),
    // calls per timing sample.
    struct KernelRun {
        KernelSpec spec;
        std::vector<Problem> problems;  // those this kernel runs on
        std::vector<Outputs> reference;
        std::vector<int> iters;
        std::vector<double> sample_seconds;    // per problem: one timed sample (iters calls)
        std::map<std::string, Eval> evals;     // by candidate key
        std::map<std::string, Compiled> kept;  // default, lowest (score), autoschedulers
        double lowest_score = INFINITY;
        std::string lowest_key;
        std::map<std::string, std::string> kept_error;  // autoscheduler -> why it has no result
        Candidate start, best;
        Eval start_eval, best_eval;
        int measured = 0, replayed = 0;
        std::vector<std::pair<double, double>> trace;  // (elapsed s, best score) after each eval
        double seconds = 0;
        // Output buffers reused by every candidate (allocating and first-touching 100 MB per
        // call would cost more than the call): by view, problem and slot (kernel measured).
        std::map<std::string, Outputs> scratch;
    };

    Outputs &scratch(KernelRun &kr, const Compiled &c, size_t problem, size_t slot);
    void compute_reference(KernelRun &kr);
    double autoschedule(KernelRun &kr, double budget);
    std::string check(KernelRun &kr, const Compiled &c);
    std::string check_problem(KernelRun &kr, const Compiled &c, size_t pi);
    std::vector<std::vector<double>> measure(KernelRun &kr, const std::vector<const Compiled *> &cs,
                                             int reps);
    Eval evaluate(KernelRun &kr, const Candidate &c, const Compiled *precompiled = nullptr);
    std::string candidate_file(KernelRun &kr, const Candidate &c);
    void note_trace(KernelRun &kr, const Eval &e);

    // -- journal (journal.cpp) --
    std::string config_line() const;

    // -- time and progress (tuner.cpp) --
    double elapsed() const { return journal_.prior_elapsed() + seconds_since(start_); }
    double left() const { return o_.budget_seconds - elapsed(); }
    void progress(const KernelRun &kr);

    // -- the search (search.cpp) --
    double eval_cost(const KernelRun &kr) const;
    bool can_afford(const KernelRun &kr, double deadline) const;
    void search_descent(KernelRun &kr, double deadline);
    std::pair<Candidate, Eval> descend(KernelRun &kr, Candidate cur, Eval cur_eval,
                                       double deadline);
    uint32_t search_seed(const KernelRun &kr) const;
    Candidate random_candidate(const KernelRun &kr, std::mt19937 &rng) const;
    void search_random(KernelRun &kr, double deadline);
    void finish_search(KernelRun &kr, const Candidate &best, const Eval &e);

    // Options, problems and output.
    Options o_;
    std::vector<Shape> shapes_;
    std::vector<Problem> problems_;
    Halide::Target target_;
    bool gpu_;
    bn2d::ScheduleParams base_;
    Halide::JITHandlers handlers_;
    bn2d::bench::StreamPool floor_pool_;
    Halide::Callable gpu_copy_fwd_, gpu_copy_bwd_;
    std::map<std::string, Memory> memory_;
    std::map<std::string, Halide::Runtime::Buffer<>> buffers_;
    std::map<std::string, FloorData> floor_;
    std::string work_dir_;
    Journal journal_;
    // The budget's own accounting (tests check it; wall-clock time is only reported): search
    // candidates started in this run, and those whose expected end was past the budget.
    int searched_ = 0, searched_past_budget_ = 0;
    Clock::time_point start_ = Clock::now(), last_print_{};
    bool tty_ = isatty(2);

    // Results, in kernel order.
    struct Result {
        std::string kernel;
        std::vector<std::string> problems;
        Candidate default_values, tuned;
        bool kept_default = false;  // tuned lost to default in the final run
        std::vector<double> default_ratio, tuned_ratio;
        std::map<std::string, std::vector<double>> auto_ratio;
        std::map<std::string, std::string> auto_error;
        int measured = 0, replayed = 0;
        std::vector<std::pair<double, double>> trace;
        double default_score = 0, search_best = 0;
    };
    std::vector<Result> results_;

    // -- the machine file and the report (report.cpp) --
    void write_outputs(bool baselines_measured);
};

}  // namespace bn2d::tune
