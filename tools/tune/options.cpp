// The tuner's command line: parsed, and checked before anything is compiled.
#include "options.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace bn2d::tune {

[[noreturn]] void usage_error(const std::string &what) {
    throw std::invalid_argument(what + " (see --help)");
}

namespace {

std::vector<std::string> split_list(const std::string &s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

const char *kHelp =
    R"(bn2d_tune: tune the schedule knobs of the batchnorm2d kernels on this machine.
  --budget-seconds N   whole-run time limit (required)
  --out FILE           machine file to write (default schedules/machines/<machine>.params)
  --machine NAME       machine name (default: from the CPU model and core count, or the GPU)
  --shapes FILE        problem list, one mb<N>ic<C>ih<H>iw<W> per line, or set:<name> for a
                       set of tests/problems.txt (default: set:suite)
  --kernels LIST       comma-separated schedule kernels (default: all eight:
                       train_fwd,eval_fwd,train_bwd,eval_bwd and their _nhwc versions)
  --backend B          cpu (default), cuda or opencl
  --dtypes LIST        dtypes each candidate is measured in (default f32; f32,bf16,f16,f64)
  --search S           descent (default) or random
  --base FILE          values to start from and keys to keep (default: --out if it exists,
                       else schedules/machines/default.params)
  --report PREFIX      write PREFIX.json (and scripts/tune.sh draws .md and .png from it);
                       default: --out without .params, plus .tune (without --out:
                       bench/results/tune_<machine>)
  --autoschedulers L   Halide autoschedulers measured as baselines (default
                       Mullapudi2016,Adams2019,Li2018; "none" for none)
  --reps N             timed repetitions per problem (default 5; the final run uses max(N, 7))
  --seed N             random search seed (default 1)
  --target T           Halide target for the kernels (default host, with the backend's API)
)";

}  // namespace

Options parse_options(int argc, char **argv, const std::string &source_dir) {
    Options o;
    auto value = [&](int &i) -> std::string {
        if (i + 1 >= argc) usage_error(std::string(argv[i]) + " needs a value");
        return argv[++i];
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            std::cout << kHelp;
            std::exit(0);
        } else if (a == "--budget-seconds") {
            o.budget_seconds = std::atof(value(i).c_str());
        } else if (a == "--out") {
            o.out = value(i);
        } else if (a == "--machine") {
            o.machine = value(i);
        } else if (a == "--shapes") {
            o.shapes_file = value(i);
        } else if (a == "--kernels") {
            o.kernels = split_list(value(i));
        } else if (a == "--backend") {
            o.backend = value(i);
        } else if (a == "--dtypes") {
            o.dtypes = split_list(value(i));
        } else if (a == "--search") {
            o.search = value(i);
        } else if (a == "--base") {
            o.base = value(i);
        } else if (a == "--report") {
            o.report = value(i);
        } else if (a == "--autoschedulers") {
            o.autoschedulers = split_list(value(i));
        } else if (a == "--reps") {
            o.reps = std::atoi(value(i).c_str());
        } else if (a == "--seed") {
            o.seed = std::atoi(value(i).c_str());
        } else if (a == "--target") {
            o.target = value(i);
        } else if (a == "--print-report-prefix") {
            o.print_report_prefix = true;  // for scripts/tune.sh: where the report goes
        } else if (a == "--halide-lib-dir") {
            o.halide_lib_dir = value(i);
        } else {
            usage_error("unknown option '" + a + "'");
        }
    }
    if (!(o.budget_seconds > 0)) usage_error("--budget-seconds N (> 0) is required");
    if (o.backend != "cpu" && o.backend != "cuda" && o.backend != "opencl")
        usage_error("--backend must be cpu, cuda or opencl, got '" + o.backend + "'");
    if (o.search != "descent" && o.search != "random")
        usage_error("--search must be descent or random, got '" + o.search + "'");
    if (o.reps < 1) usage_error("--reps must be >= 1");
    if (o.autoschedulers == std::vector<std::string>{"none"}) o.autoschedulers.clear();
    for (const std::string &a : o.autoschedulers)
        if (std::find(kAllAutoschedulers.begin(), kAllAutoschedulers.end(), a) ==
            kAllAutoschedulers.end())
            usage_error("unknown autoscheduler '" + a + "' in --autoschedulers");
    for (const std::string &k : o.kernels)
        if (std::find(kAllKernels.begin(), kAllKernels.end(), k) == kAllKernels.end())
            usage_error("unknown kernel '" + k + "' in --kernels");
    for (const std::string &d : o.dtypes)
        if (std::find(std::begin(vocabulary::kDtypes), std::end(vocabulary::kDtypes), d) ==
            std::end(vocabulary::kDtypes))
            usage_error("unknown dtype '" + d + "' in --dtypes (f32, bf16, f16, f64)");
    if (o.kernels.empty() || o.dtypes.empty()) usage_error("--kernels and --dtypes need an item");
    // --machine and --out default in main (they need the target); so does --base when --out
    // names an existing file.
    if (o.base.empty()) o.base = source_dir + "/schedules/machines/default.params";
    return o;
}

}  // namespace bn2d::tune
