// The tuner's command line (`--help` lists it): parsed and checked here; main fills the defaults
// that need the target (--machine, --out, --report, --base when --out exists).
#pragma once

#include <iterator>
#include <string>
#include <vector>

#include "bn2d_vocabulary.h"

namespace bn2d::tune {

// The schedule kernels of the variant table (generators/variants.cmake).
inline const std::vector<std::string> kAllKernels = {std::begin(vocabulary::kScheduleKernels),
                                                     std::end(vocabulary::kScheduleKernels)};
inline const std::vector<std::string> kAllAutoschedulers = {"Mullapudi2016", "Adams2019", "Li2018"};

struct Options {
    double budget_seconds = 0;
    std::string out, machine, shapes_file, backend = "cpu", search = "descent", base, report;
    std::string target;  // Halide target; default host (+ the GPU API)
    std::vector<std::string> kernels = kAllKernels, dtypes = {"f32"};
    std::vector<std::string> autoschedulers = kAllAutoschedulers;  // the baselines
    int reps = 5, seed = 1;
    std::string halide_lib_dir;
    bool print_report_prefix = false;
};

// A mistake on the command line: thrown, and main prints it.
[[noreturn]] void usage_error(const std::string &what);

// --help prints the help and exits.
Options parse_options(int argc, char **argv, const std::string &source_dir);

}  // namespace bn2d::tune
