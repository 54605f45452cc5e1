// bn2d_tune: searches the schedule knobs of every kernel on this machine and writes a machine file
// (schedules/machines/<machine>.params) the build reads with -DBN2D_SCHEDULE_MACHINE=<machine>.
// Run it through scripts/tune.sh, which builds it and draws the report; `--help` lists options.
//
// A candidate is a value for each knob its kernel's schedule depends on (searched_knobs() and
// kKnobRanges in schedules/cpu_schedules.h, gpu_schedules.h). It is measured without rebuilding
// anything: the kernel's Generator (generators/bn2d_generators.cpp, linked into this binary) is
// instantiated with a machine file holding the candidate, JIT-compiled in this process, run once
// into poisoned outputs and compared with the default schedule's outputs (a candidate that
// leaves an element unwritten or computes something else is rejected, so every file the tuner
// writes builds correct kernels), then timed on every problem with the floor interleaved:
// score = geometric mean over problems of median(kernel) / median(floor).
//   floor  cpu: the op's bytes moved with streaming stores on all cores (bench/stream_floor.h);
//          gpu: the same bytes through a JIT-compiled device copy (y = a*x + b).
//
// Search (--search): `descent` (default) is coordinate descent from the base file's values: for
// each knob, step to the neighbouring value of its range while that improves the score by more
// than the noise margin, first up, then down; sweep the knobs until a sweep changes nothing.
// `random` samples the grid uniformly, as a baseline to measure the descent against.
// Baselines: Halide's autoschedulers (Mullapudi2016, Adams2019, Li2018, from the wheel) schedule
// the same Generators (with their estimates, the seed problem) and are measured beside default
// and tuned in the final, interleaved run that the file's header and the report quote.
//
// Budget: the whole run, compile and measurement, stops within --budget-seconds: phase 1
// compiles and measures defaults (and the autoschedulers when the budget affords them), phase 2
// searches kernel by kernel (each kernel gets an equal share of what is left; time a kernel does
// not use passes on), phase 3 (reserved from the start, sized from phase 1's measurements)
// measures default, tuned and baselines interleaved. Every measured candidate is appended to
// <out>.journal: an interrupted run, started again with the same options, replays what it had
// measured (instantly) and continues with the budget it had left.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "Halide.h"
#include "data.h"
#include "options.h"
#include "tuner.h"

namespace {

using namespace Halide;

// The machine a CPU tuning is for: the CPU model, its microarchitecture as Halide tunes for it
// (the target's tune_<arch>, else its best ISA feature) and the core count, e.g. "AMD EPYC" on
// Zen 4 with 2 cores -> amd-epyc-znver4-2core. Two CPUs of one model name (a cloud VM's "AMD
// EPYC" is Zen 3 on one host, Zen 4 on another) must not share a file tuned for one of them.
std::string cpu_machine_name(const Target &target) {
    std::ifstream in("/proc/cpuinfo");
    std::string line, model = "cpu";
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            model = line.substr(line.find(':') + 1);
            break;
        }
    }
    std::string arch;
    std::istringstream features(target.to_string());
    for (std::string f; std::getline(features, f, '-');)
        if (f.rfind("tune_", 0) == 0) arch = f.substr(5);
    if (arch.empty()) {
        arch = target.has_feature(Target::AVX512)  ? "avx512"
               : target.has_feature(Target::AVX2)  ? "avx2"
               : target.has_feature(Target::SSE41) ? "sse41"
                                                   : "x86-64";
    }
    std::string name;
    for (char ch : model + " " + arch) {
        if (std::isalnum(static_cast<unsigned char>(ch))) {
            name += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        } else if (!name.empty() && name.back() != '-') {
            name += '-';
        }
    }
    while (!name.empty() && name.back() == '-') name.pop_back();
    return name + "-" + std::to_string(std::thread::hardware_concurrency()) + "core";
}

}  // namespace

int main(int argc, char **argv) {
    try {
        bn2d::tune::Options o = bn2d::tune::parse_options(argc, argv, BN2D_SOURCE_DIR);
        Target target = o.target.empty() ? get_host_target() : Target(o.target);
        // CUDA: the AOT build's capability (generators/variants.cmake), not Halide's default 2.0.
        if (o.target.empty() && o.backend == "cuda")
            target = target.with_feature(Target::CUDA).with_feature(Target::CUDACapability80);
        if (o.target.empty() && o.backend == "opencl")
            target = target.with_feature(Target::OpenCL).with_feature(Target::CLDoubles);
        if (o.backend == "opencl" &&
            std::find(o.dtypes.begin(), o.dtypes.end(), "f16") != o.dtypes.end())
            target = target.with_feature(Target::CLHalf);
        if (o.machine.empty())
            o.machine = o.backend == "cpu" ? cpu_machine_name(target) : o.backend + "-gpu";
        if (o.out.empty()) {  // the tree's machine file, and its report beside the others
            o.out = std::string(BN2D_SOURCE_DIR) + "/schedules/machines/" + o.machine + ".params";
            if (o.report.empty())
                o.report = std::string(BN2D_SOURCE_DIR) + "/bench/results/tune_" + o.machine;
        }
        if (o.base == std::string(BN2D_SOURCE_DIR) + "/schedules/machines/default.params" &&
            std::ifstream(o.out).good())
            o.base = o.out;
        if (o.report.empty()) {
            std::string stem = o.out;
            if (stem.size() > 7 && stem.substr(stem.size() - 7) == ".params")
                stem.resize(stem.size() - 7);
            o.report = stem + ".tune";
        }
        if (o.halide_lib_dir.empty()) o.halide_lib_dir = BN2D_HALIDE_LIB_DIR;
        if (o.print_report_prefix) {
            std::printf("%s\n", o.report.c_str());
            return 0;
        }
        for (const std::string &as : o.autoschedulers) {
            std::string lib = as;
            std::transform(lib.begin(), lib.end(), lib.begin(), ::tolower);
            load_plugin(o.halide_lib_dir + "/libautoschedule_" + lib + ".so");
        }
        bn2d::tune::Tuner tuner(o, bn2d::tune::load_shapes(o.shapes_file), target);
        return tuner.run();
    } catch (const Halide::Error &e) {
        std::fprintf(stderr, "\nbn2d_tune: Halide error: %s\n", e.what());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "\nbn2d_tune: %s\n", e.what());
    }
    return 1;
}
