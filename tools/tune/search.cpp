// Candidates: checked against the default schedule's outputs, scored (or replayed from the
// journal), and searched for (coordinate descent or random samples; see main.cpp); and Halide's
// autoschedulers, the baselines.
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "tuner.h"

namespace bn2d::tune {

using namespace Halide;

namespace {

// A candidate replaces the current one only if it is this much faster: the same binary measured
// twice on this VM moves by a few percent.
constexpr double kMinGain = 0.03;

}  // namespace

// The default schedule's outputs on every problem: what candidates are checked against.
void Tuner::compute_reference(KernelRun &kr) {
    const Compiled &def = kr.kept.at("default");
    for (const Problem &p : kr.problems) {
        kr.reference.push_back(make_outputs(def, p));
        poison(kr.reference.back());
        call(def, p, kr.reference.back());
        if (gpu_)
            for (auto &b : kr.reference.back().buffers) b.copy_to_host();
    }
}

// Halide's autoschedulers on kr's Generator, each checked against the reference and kept for
// the final run, while `budget` seconds last; returns the seconds spent.
double Tuner::autoschedule(KernelRun &kr, double budget) {
    const auto start = Clock::now();
    for (const std::string &as : o_.autoschedulers) {
        if (seconds_since(start) > budget) {
            kr.kept_error[as] = "not run: over the baselines' share of the budget";
            continue;
        }
        const auto t0 = Clock::now();
        try {
            Compiled c = compile(kr.spec, o_.base, as);
            std::string failures;
            for (size_t pi = 0; pi < kr.problems.size(); ++pi) {
                const std::string bad = check_problem(kr, c, pi);
                if (bad.empty()) continue;
                c.at(kr.problems[pi].dtype).failing.insert(kr.problems[pi].name());
                failures += (failures.empty() ? "" : "; ") + bad;
            }
            if (!failures.empty()) kr.kept_error[as] = failures;
            kr.kept[as] = c;
        } catch (...) {
            kr.kept_error[as] = current_error();
        }
        if (kr.kept_error.count(as))
            std::fprintf(stderr, "\n%s, %s (%.1f s): %s\n", kr.spec.name.c_str(), as.c_str(),
                         seconds_since(t0), kr.kept_error[as].c_str());
        progress(kr);
    }
    return seconds_since(start);
}

// Runs c on every problem into poisoned outputs and compares with the reference; returns
// the first mismatch, or "".
std::string Tuner::check(KernelRun &kr, const Compiled &c) {
    for (size_t pi = 0; pi < kr.problems.size(); ++pi) {
        const std::string bad = check_problem(kr, c, pi);
        if (!bad.empty()) return bad;
    }
    return "";
}

std::string Tuner::check_problem(KernelRun &kr, const Compiled &c, size_t pi) {
    const Problem &p = kr.problems[pi];
    Outputs &out = scratch(kr, c, pi, 0);
    poison(out);
    try {
        call(c, p, out);
    } catch (const std::exception &e) {
        return p.name() + ": " + e.what();
    }
    const double tol = p.dtype == "f64" ? 1e-9 : p.dtype == "f32" ? 1e-4 : 1.6e-2;
    for (size_t oi = 0; oi < out.buffers.size(); ++oi) {
        Runtime::Buffer<> &got = out.buffers[oi], &want = kr.reference[pi].buffers[oi];
        if (gpu_) got.copy_to_host();
        const size_t n = got.number_of_elements();
        for (size_t i = 0; i < n; ++i) {
            const double g = element(got, i), w = element(want, i);
            if (!(std::fabs(g - w) <= tol * (1 + std::fabs(w)))) {
                std::ostringstream msg;
                msg << p.name() << ": wrong output " << oi << " at element " << i << ": " << g
                    << " (default schedule: " << w << ")";
                return msg.str();
            }
        }
    }
    return "";
}

// The score of candidate c (compiled, checked and measured, or replayed from the journal);
// `precompiled` is its kernel when the caller has it. The lowest-scoring kernel is kept.
Eval Tuner::evaluate(KernelRun &kr, const Candidate &c, const Compiled *precompiled) {
    const std::string key = candidate_key(c);
    if (auto it = kr.evals.find(key); it != kr.evals.end()) return it->second;
    if (const Eval *replayed = journal_.find(kr.spec.name, key)) {
        ++kr.replayed;
        kr.evals[key] = *replayed;
        note_trace(kr, *replayed);
        return *replayed;
    }
    if (!precompiled) {  // a search candidate: did the plan start it within the budget?
        ++searched_;
        if (elapsed() + eval_cost(kr) > o_.budget_seconds) ++searched_past_budget_;
    }
    const auto t0 = Clock::now();
    Eval e;
    Compiled compiled;
    try {
        // The default schedule is the reference: nothing to check it against.
        compiled = precompiled ? *precompiled : compile(kr.spec, candidate_file(kr, c));
        if (!precompiled) e.error = check(kr, compiled);
        if (e.error.empty()) {
            e.ratios = measure(kr, {&compiled}, o_.reps)[0];
            e.score = geomean(e.ratios);
        }
    } catch (...) {
        e.error = current_error();
    }
    ++kr.measured;
    kr.seconds += seconds_since(t0);
    kr.evals[key] = e;
    if (e.score < kr.lowest_score) {
        kr.lowest_score = e.score;
        kr.lowest_key = key;
        kr.kept["lowest"] = compiled;
    }
    journal_.append(kr.spec.name, key, e, elapsed());
    note_trace(kr, e);
    return e;
}

std::string Tuner::candidate_file(KernelRun &kr, const Candidate &c) {
    return write_params(kr.spec.name, c, work_dir_ + "/candidate.params");
}

void Tuner::note_trace(KernelRun &kr, const Eval &e) {
    const double best = std::min(kr.trace.empty() ? INFINITY : kr.trace.back().second, e.score);
    kr.trace.emplace_back(elapsed(), best);
    progress(kr);
}

// Time one more evaluation of this kernel needs: its compile and measurement so far.
double Tuner::eval_cost(const KernelRun &kr) const {
    return kr.measured ? kr.seconds / kr.measured : 0;
}

bool Tuner::can_afford(const KernelRun &kr, double deadline) const {
    return elapsed() + eval_cost(kr) < deadline;
}

// Coordinate descent from kr.best, then from random points while the kernel's share of the
// budget lasts (the descent is local; a restart may find another basin). Deterministic given
// the scores, so a resumed run replays the same path from the journal.
void Tuner::search_descent(KernelRun &kr, double deadline) {
    std::mt19937 rng(search_seed(kr));
    Candidate best = kr.best;
    Eval best_eval = kr.best_eval;
    for (int restart = 0; can_afford(kr, deadline); ++restart) {
        Candidate from = best;
        Eval from_eval = best_eval;
        if (restart > 0) {
            from = random_candidate(kr, rng);
            if (kr.evals.count(candidate_key(from))) {
                if (restart > 64) break;  // the grid is exhausted around here
                continue;
            }
            from_eval = evaluate(kr, from);
        }
        auto [cur, cur_eval] = descend(kr, from, from_eval, deadline);
        if (cur_eval.score < best_eval.score * (1 - kMinGain)) best = cur, best_eval = cur_eval;
    }
    finish_search(kr, best, best_eval);
}

// One descent: for each knob, step to the neighbouring value of its range while that gains
// more than kMinGain, first up, then down; sweep until a sweep changes nothing.
std::pair<Candidate, Eval> Tuner::descend(KernelRun &kr, Candidate cur, Eval cur_eval,
                                          double deadline) {
    const auto &ranges = knob_ranges(o_.backend);
    for (bool changed = true; changed;) {
        changed = false;
        for (const auto &[knob, value] : Candidate(cur)) {
            std::vector<int> values = bn2d::knob_range(ranges, knob).values;
            if (std::find(values.begin(), values.end(), value) == values.end()) {
                values.push_back(value);
                std::sort(values.begin(), values.end());
            }
            const long at = std::find(values.begin(), values.end(), cur[knob]) - values.begin();
            for (int dir : {+1, -1}) {
                bool moved = false;
                for (long j = at + dir; j >= 0 && j < long(values.size()); j += dir) {
                    if (!can_afford(kr, deadline)) return {cur, cur_eval};
                    Candidate cand = cur;
                    cand[knob] = values[size_t(j)];
                    Eval e = evaluate(kr, cand);
                    if (!(e.score < cur_eval.score * (1 - kMinGain))) break;
                    cur = cand;
                    cur_eval = e;
                    moved = changed = true;
                }
                if (moved) break;
            }
        }
    }
    return {cur, cur_eval};
}

uint32_t Tuner::search_seed(const KernelRun &kr) const {
    return uint32_t(o_.seed) * 7919u + uint32_t(std::hash<std::string>()(kr.spec.name));
}

Candidate Tuner::random_candidate(const KernelRun &kr, std::mt19937 &rng) const {
    Candidate c;
    for (const auto &[knob, v] : kr.start) {
        const auto &vals = bn2d::knob_range(knob_ranges(o_.backend), knob).values;
        c[knob] = vals[rng() % vals.size()];
    }
    return c;
}

// Uniform samples of the grid: the baseline the descent is measured against.
void Tuner::search_random(KernelRun &kr, double deadline) {
    std::mt19937 rng(search_seed(kr));
    Candidate best = kr.best;
    Eval best_eval = kr.best_eval;
    size_t grid = 1;
    for (const auto &[knob, v] : kr.start)
        grid *= bn2d::knob_range(knob_ranges(o_.backend), knob).values.size();
    for (size_t tries = 0; tries < 4 * grid && can_afford(kr, deadline); ++tries) {
        Candidate cand = random_candidate(kr, rng);
        if (kr.evals.count(candidate_key(cand))) continue;
        Eval e = evaluate(kr, cand);
        if (e.score < best_eval.score) best = cand, best_eval = e;
    }
    finish_search(kr, best, best_eval);
}

void Tuner::finish_search(KernelRun &kr, const Candidate &best, const Eval &e) {
    kr.best = best;
    kr.best_eval = e;
}

}  // namespace bn2d::tune
