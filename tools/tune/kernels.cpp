// Kernel specs: which Generator, with which parameters, builds each schedule kernel.
#include "kernels.h"

#include <sstream>
#include <stdexcept>

#include "cpu_schedules.h"
#include "gpu_schedules.h"

namespace bn2d::tune {

// The schedule op's kernel in the variant table (bn2d_vocabulary.h): its generator and params.
KernelSpec kernel_spec(const std::string &name) {
    const ScheduleKernel sk = parse_schedule_kernel(name);
    for (const vocabulary::Kernel &table : vocabulary::kKernels) {
        if (sk.op != table.name) continue;
        KernelSpec k{name,
                     table.generator,
                     vocabulary::kLayouts[static_cast<int>(sk.layout)],
                     {},
                     std::string(table.generator) == "bn2d_backward"};
        std::istringstream params(table.params);
        for (std::string kv; params >> kv;) {
            const size_t eq = kv.find('=');
            k.params[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
        return k;
    }
    throw std::runtime_error("schedule op '" + sk.op + "' is not a kernel of the variant table");
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
