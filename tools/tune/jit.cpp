// Compiling a candidate: the kernel's Generator instantiated with a machine file (or an
// autoscheduler) and JIT-compiled in this process, so no kernel library is rebuilt to measure it.
#include <thread>

#include "tuner.h"

namespace bn2d::tune {

using namespace Halide;

std::string g_jit_error;
void jit_error(JITUserContext *, const char *msg) { g_jit_error = msg; }

std::string current_error() {
    try {
        throw;
    } catch (const Halide::Error &e) {
        std::string what = e.what();
        while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
        if (what.empty() || what == "Error:")  // Mullapudi2016 on these pipelines, for one
            what = "an error without a message (HL_DEBUG_CODEGEN=2 shows Halide's last steps)";
        return "Halide: " + what;
    } catch (const std::exception &e) {
        return e.what();
    } catch (...) {
        return "unknown exception";
    }
}

// The kernel of `k` for every dtype, scheduled by `params_file` or by an autoscheduler.
Compiled Tuner::compile(const KernelSpec &k, const std::string &params_file,
                        const std::string &autoscheduler) {
    Compiled c;
    for (const std::string &dtype : o_.dtypes)
        c[dtype] = compile_one(k, dtype, params_file, autoscheduler);
    return c;
}
Kernel Tuner::compile_one(const KernelSpec &k, const std::string &dtype,
                          const std::string &params_file, const std::string &autoscheduler) {
    GeneratorContext ctx(target_);
    if (!autoscheduler.empty()) {
        std::map<std::string, std::string> extra{
            {"parallelism", std::to_string(std::thread::hardware_concurrency())}};
        if (autoscheduler == "Mullapudi2016") extra["last_level_cache_size"] = "16777216";
        // Greedy (beam size 1): the default beam search took minutes per kernel here.
        if (autoscheduler == "Adams2019") extra["beam_size"] = "1";
        if (gpu_ && autoscheduler == "Mullapudi2016") extra["experimental_gpu_schedule"] = "1";
        ctx = GeneratorContext(target_, AutoschedulerParams(autoscheduler, extra));
    }
    auto gen = Internal::GeneratorRegistry::create(k.generator, ctx);
    gen->set_generatorparam_value("dtype", dtype);
    gen->set_generatorparam_value("layout", k.layout);
    gen->set_generatorparam_value("schedule_file", params_file);
    for (const auto &[key, v] : k.params) gen->set_generatorparam_value(key, v);
    Pipeline p = gen->build_pipeline();
    if (!autoscheduler.empty()) p.apply_autoscheduler(target_, ctx.autoscheduler_params());
    std::vector<Argument> arguments;
    Kernel c;
    c.args = gen->arginfos();
    c.view = autoscheduler.empty() ? k.layout : k.layout + "4d";
    for (const auto &a : c.args) {
        if (a.dir != Internal::ArgInfoDirection::Input) continue;
        for (const auto &param : gen->input_parameter(a.name)) {
            arguments.emplace_back(
                param.name(), param.is_buffer() ? Argument::InputBuffer : Argument::InputScalar,
                param.type(), param.dimensions(), param.get_argument_estimates());
        }
    }
    p.jit_handlers() = handlers_;
    c.callable = p.compile_to_callable(arguments, target_);
    return c;
}

}  // namespace bn2d::tune
