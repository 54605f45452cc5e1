// The run: the defaults compiled and measured, the search kernel by kernel, the final interleaved
// run (the phases and the budget are described in main.cpp); and the progress line.
#include "tuner.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace bn2d::tune {

using namespace Halide;

Tuner::Tuner(Options o, std::vector<Shape> shapes, Target target)
    : o_(std::move(o)), shapes_(std::move(shapes)), target_(target), gpu_(o_.backend != "cpu"),
      floor_pool_(int(std::thread::hardware_concurrency())) {
    for (const Shape &s : shapes_)
        for (const std::string &d : o_.dtypes) problems_.push_back({s, d});
    base_ = bn2d::ScheduleParams::load(o_.base);
    handlers_.custom_error = jit_error;
}

int Tuner::run() {
    // Without the device, Halide's runtime would abort at the first copy: say so instead.
    if (gpu_ && !Halide::host_supports_target_device(target_))
        throw std::runtime_error("no usable " + o_.backend + " device here (target " +
                                 target_.to_string() + ")");
    char tmpl[] = "/tmp/bn2d_tune.XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("cannot create a temporary directory");
    work_dir_ = tmpl;
    journal_.open(o_.out + ".journal", config_line());
    std::fprintf(stderr, "tuning %zu kernels x %zu problems on %s (%s), budget %.0f s\n",
                 o_.kernels.size(), problems_.size(), o_.machine.c_str(),
                 target_.to_string().c_str(), o_.budget_seconds);

    // Phase 1: every kernel's default schedule, compiled and measured (the costs that size the
    // rest of the run).
    std::vector<KernelRun> runs;
    double compile_seconds = 0;  // compiling the defaults
    for (const std::string &name : o_.kernels) {
        KernelRun kr;
        kr.spec = kernel_spec(name);
        // As the runtime dispatches (runtime/src/halide_glue.cpp, kMinNhwcChannels): channels_last
        // tensors with fewer than 16 channels run the strided (NCHW-scheduled) kernels, so the
        // NHWC kernels are tuned on the problems they run.
        for (const Problem &p : problems_)
            if (kr.spec.layout != "nhwc" || p.shape.c >= 16) kr.problems.push_back(p);
        if (kr.problems.empty()) {
            std::fprintf(stderr, "%s: no problem with 16 or more channels: not tuned\n",
                         name.c_str());
            continue;
        }
        kr.iters.assign(kr.problems.size(), 0);
        kr.sample_seconds.assign(kr.problems.size(), 0);
        for (const std::string &knob : searched_knobs(o_.backend, name)) {
            const KnobRange &r = bn2d::knob_range(knob_ranges(o_.backend), knob);
            kr.start[knob] = base_.get(o_.backend, name, knob, r.fallback);
        }
        const auto t0 = Clock::now();
        Compiled def = compile(kr.spec, o_.base);
        kr.kept["default"] = def;
        compile_seconds += seconds_since(t0);
        kr.start_eval = evaluate(kr, kr.start, &def);
        if (!kr.start_eval.error.empty())
            throw std::runtime_error(name + ": the default schedule fails: " + kr.start_eval.error);
        // Replayed from the journal: one repetition still times the problems (the final run's
        // reserve is sized from it).
        if (kr.replayed) measure(kr, {&def}, 1);
        kr.seconds = seconds_since(t0);  // the first evaluation's cost: a compile, a measurement
        kr.best = kr.start;
        kr.best_eval = kr.start_eval;
        kr.scratch.clear();  // one kernel's buffers at a time: memory is slow to first touch
        runs.push_back(std::move(kr));
    }
    if (runs.empty()) throw std::runtime_error("no kernel to tune on these problems");
    // The final run measures default, tuned, autoschedulers and the floor, with more reps.
    const int final_reps = std::max(o_.reps, 7);
    // Its cost: per kernel and problem, (reps + a warm-up) samples of each implementation and
    // the floor, with a margin for the machine's noise.
    auto final_cost = [&](size_t implementations) {
        double sample = 0;
        for (const KernelRun &kr : runs)
            for (double t : kr.sample_seconds) sample += t;
        return 1.3 * sample * double(implementations + 1) * (final_reps + 1);
    };
    bool baselines = !o_.autoschedulers.empty();
    const double compile_estimate = compile_seconds / double(runs.size());
    if (baselines) {
        // Autoscheduling runs a search of its own: give the baselines at most a third of what
        // is left after the final run's reserve, judged from one default compile.
        const size_t n = o_.autoschedulers.size();
        const double cost = double(n * runs.size()) * std::max(compile_estimate, 0.5) * 2.0 +
                            final_cost(2 + n) - final_cost(2);
        if (cost > (left() - final_cost(2)) / 3) {
            std::fprintf(stderr,
                         "\nbudget too small for Halide's autoschedulers (about %.0f s): "
                         "not measured\n",
                         cost);
            baselines = false;
        }
    }
    double baseline_budget = baselines ? (left() - final_cost(2)) / 3 : 0;
    const size_t implementations = 2 + (baselines ? o_.autoschedulers.size() : 0);
    // The final run, and a compile of each kernel's best candidate if it was not kept.
    const double reserve =
        final_cost(implementations) + compile_estimate * double(runs.size()) / 2 + 2.0;

    // Phase 2: the search, kernel by kernel.
    for (size_t i = 0; i < runs.size(); ++i) {
        KernelRun &kr = runs[i];
        compute_reference(kr);
        if (baselines) baseline_budget -= autoschedule(kr, baseline_budget);
        const double share = (left() - reserve) / double(runs.size() - i);
        const double deadline = elapsed() + std::max(0.0, share);
        if (o_.search == "descent")
            search_descent(kr, deadline);
        else
            search_random(kr, deadline);
        kr.scratch.clear();    // memory back: the next kernel's buffers
        kr.reference.clear();  // only candidates are checked against it
        if (tty_) std::fprintf(stderr, "\n");
        std::fprintf(stderr,
                     "%-15s %3d candidates (%d replayed): default %.3fx, best %.3fx floor  %s\n",
                     kr.spec.name.c_str(), kr.measured + kr.replayed, kr.replayed,
                     kr.start_eval.score, kr.best_eval.score, candidate_key(kr.best).c_str());
    }

    // Phase 3: default, tuned and baselines measured interleaved, in one run.
    std::fprintf(stderr, "final measurement (%d reps, interleaved)...\n", final_reps);
    const double final_start = elapsed();
    for (KernelRun &kr : runs) {
        Result r;
        r.kernel = kr.spec.name;
        for (const Problem &p : kr.problems) r.problems.push_back(p.name());
        r.default_values = kr.start;
        r.tuned = kr.best;
        r.measured = kr.measured;
        r.replayed = kr.replayed;
        r.trace = kr.trace;
        r.default_score = kr.start_eval.score;
        r.search_best = kr.best_eval.score;
        const std::string best_key = candidate_key(kr.best);
        if (best_key == candidate_key(kr.start))
            kr.kept["best"] = kr.kept["default"];
        else if (best_key == kr.lowest_key)
            kr.kept["best"] = kr.kept["lowest"];
        else
            kr.kept["best"] = compile(kr.spec, candidate_file(kr, kr.best));
        // Tuned = default: measured once (the same kernel twice would show the noise as a gain).
        const bool same = best_key == candidate_key(kr.start);
        std::vector<const Compiled *> cs{&kr.kept["default"]};
        std::vector<std::string> names{"default"};
        if (!same) cs.push_back(&kr.kept["best"]), names.push_back("tuned");
        if (baselines) {
            for (const std::string &as : o_.autoschedulers) {
                if (kr.kept.count(as)) {
                    cs.push_back(&kr.kept[as]);
                    names.push_back(as);
                } else {
                    r.auto_error[as] = kr.kept_error.count(as) ? kr.kept_error[as] : "not run";
                }
            }
        }
        auto ratios = measure(kr, cs, final_reps);
        kr.scratch.clear();
        r.default_ratio = ratios[0];
        r.tuned_ratio = same ? ratios[0] : ratios[1];
        for (size_t i = same ? 1 : 2; i < names.size(); ++i) {
            r.auto_ratio[names[i]] = ratios[i];
            if (kr.kept_error.count(names[i])) r.auto_error[names[i]] = kr.kept_error[names[i]];
        }
        // A tuned candidate that loses to the default in the final run was a noise winner.
        if (geomean(r.tuned_ratio) > geomean(r.default_ratio)) {
            r.kept_default = candidate_key(r.tuned) != candidate_key(r.default_values);
            r.tuned = r.default_values;
            r.tuned_ratio = r.default_ratio;
        }
        results_.push_back(std::move(r));
    }
    const double final_seconds = elapsed() - final_start;
    write_outputs(baselines);
    std::remove((work_dir_ + "/candidate.params").c_str());
    rmdir(work_dir_.c_str());
    // What the tuner decided is its to keep; how long the machine took for the fixed phases (the
    // defaults' compile, the final run) is not, so it is reported, not promised.
    std::fprintf(stderr,
                 "budget: %d search candidates started, %d expected to end past the budget; "
                 "final run %.0f s (reserved %.0f s)\n",
                 searched_, searched_past_budget_, final_seconds, reserve);
    std::fprintf(stderr, "done in %.0f s of %.0f s: %s\n", elapsed(), o_.budget_seconds,
                 o_.out.c_str());
    return 0;
}
// A machine file's keys: the base's, and over them <backend>.<kernel>.<knob> of `tuned`.
std::map<std::string, std::string>
Tuner::machine_keys(const std::map<std::string, Candidate> &tuned) const {
    std::map<std::string, std::string> keys;
    for (const auto &[key, v] : base_.items()) keys[key] = v;
    for (const auto &[kernel, c] : tuned)
        for (const auto &[knob, v] : c)
            keys[o_.backend + "." + kernel + "." + knob] = std::to_string(v);
    return keys;
}

// A machine file: the base with this candidate's keys for kernel k.
std::string Tuner::write_params(const std::string &kernel, const Candidate &c,
                                const std::string &path) {
    std::ofstream out(path);
    for (const auto &[key, v] : machine_keys({{kernel, c}})) out << key << " = " << v << "\n";
    if (!out) throw std::runtime_error("cannot write " + path);
    return path;
}

void Tuner::progress(const KernelRun &kr) {
    const double frac = std::clamp(elapsed() / o_.budget_seconds, 0.0, 1.0);
    const int width = 24, done = int(frac * width);
    char line[256];
    std::snprintf(line, sizeof line,
                  "[%s%s] %3d%% %4.0fs ETA %4.0fs | %-14s %3d measured | best %.2fx floor "
                  "(default %.2fx)",
                  std::string(done, '#').c_str(), std::string(width - done, '.').c_str(),
                  int(frac * 100), elapsed(), std::max(0.0, left()), kr.spec.name.c_str(),
                  kr.measured + kr.replayed, kr.trace.empty() ? NAN : kr.trace.back().second,
                  kr.start_eval.score);
    if (tty_) {
        std::fprintf(stderr, "\r%s\033[K", line);
    } else if (Clock::now() - last_print_ > std::chrono::seconds(10)) {
        std::fprintf(stderr, "%s\n", line);
        last_print_ = Clock::now();
    }
}

}  // namespace bn2d::tune
