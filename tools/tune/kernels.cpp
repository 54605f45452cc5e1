// Kernel specs: which Generator, with which parameters, builds each schedule kernel.
#include "kernels.h"

#include "cpu_schedules.h"
#include "gpu_schedules.h"

namespace bn2d::tune {

KernelSpec kernel_spec(const std::string &name) {
    const bool nhwc = name.size() > 5 && name.substr(name.size() - 5) == "_nhwc";
    const std::string op = nhwc ? name.substr(0, name.size() - 5) : name;
    KernelSpec k{name, "", nhwc ? "nhwc" : "nchw", {}, false};
    if (op == "train_fwd") k.generator = "bn2d_train_forward";
    if (op == "eval_fwd") k.generator = "bn2d_eval_forward";
    if (op == "train_bwd" || op == "eval_bwd") {
        k.generator = "bn2d_backward";
        k.params["mode"] = op == "train_bwd" ? "train" : "eval";
        k.backward = true;
    }
    return k;
}

const std::vector<KnobRange> &knob_ranges(const std::string &backend) {
    return backend == "cpu" ? bn2d::cpu::kKnobRanges : bn2d::gpu::kKnobRanges;
}
std::vector<std::string> searched_knobs(const std::string &backend, const std::string &kernel) {
    return backend == "cpu" ? bn2d::cpu::searched_knobs(kernel) : bn2d::gpu::searched_knobs(kernel);
}

std::string candidate_key(const Candidate &c) {
    std::string s;
    for (const auto &[knob, v] : c) s += (s.empty() ? "" : ",") + knob + "=" + std::to_string(v);
    return s;
}

}  // namespace bn2d::tune
