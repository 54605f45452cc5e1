// The kernels the tuner tunes, by the names a machine file uses, and the candidates it measures.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "schedule_params.h"

namespace bn2d::tune {

// A schedule kernel (the name a machine file uses) and the Generator that builds it: the kernel
// with every output, which runs every loop the knobs shape.
struct KernelSpec {
    std::string name, generator, layout;
    std::map<std::string, std::string> params;
    bool backward;
};

KernelSpec kernel_spec(const std::string &name);

const std::vector<KnobRange> &knob_ranges(const std::string &backend);
std::vector<std::string> searched_knobs(const std::string &backend, const std::string &kernel);

using Candidate = std::map<std::string, int>;  // knob -> value

// "knob=value,..." in knob order: how the journal, the log and the report name a candidate.
std::string candidate_key(const Candidate &c);

struct Eval {
    double score = INFINITY;     // geomean of time / floor; inf: rejected
    std::vector<double> ratios;  // per problem
    std::string error;
};

}  // namespace bn2d::tune
