// Halide Generators for batchnorm2d: training forward, eval forward and backward.
//
// generate() reads as: the algorithm (from bn2d_algorithm.h), estimates, then the schedule
// (from schedules/, chosen by target). Variants are GeneratorParams; CMake builds one library
// per variant and target family, named like bn2d_train_fwd_affine_f32_nchw_cpu.
#include "Halide.h"
#include "bn2d_algorithm.h"
#include "cpu_schedules.h"
#include "gpu_schedules.h"
#include "schedule_params.h"

namespace {

using namespace Halide;
using bn2d::ScheduleParams;

// Seed problem (20x100x35x45) as estimates, for the autoschedulers and the autotuner.
constexpr int kEstN = 20, kEstC = 100, kEstH = 35, kEstW = 45;

template<typename T>
void estimate_nchw(T &buf) {
    buf.set_estimates({{0, kEstW}, {0, kEstH}, {0, kEstC}, {0, kEstN}});
}
template<typename T>
void estimate_c(T &buf) {
    buf.set_estimates({{0, kEstC}});
}

bn2d::Shape shape_of(const GeneratorInput<Buffer<const float, 4>> &x, Type acc) {
    return {x.dim(0).extent(), x.dim(1).extent(), x.dim(2).extent(), x.dim(3).extent(), acc};
}

// Fails the build if a machine file sets a knob of this kernel that no schedule read.
void check_all_params_used(const ScheduleParams &sp, const std::string &backend,
                           const std::string &kernel) {
    std::string unused = sp.unused_keys(backend, kernel);
    if (!unused.empty())
        throw std::runtime_error(sp.path() + ": unknown or unused schedule keys: " + unused);
}

// Common to every kernel: the schedule file, the accumulator type, and the affine parameters.
template<typename Self>
class Bn2dGenerator : public Generator<Self> {
public:
    GeneratorParam<bool> affine{"affine", true};
    GeneratorParam<std::string> schedule_file{"schedule_file", ""};
    // Type of the per-channel sums: auto = float64 (see bn2d::Shape in bn2d_algorithm.h).
    GeneratorParam<std::string> accumulator{"accumulator", "auto"};

protected:
    bn2d::Vars v;
    // Added by configure() when affine, after the declared inputs.
    GeneratorInput<Buffer<const float, 1>> *weight = nullptr, *bias = nullptr;

    void add_affine_inputs(bool with_bias) {
        if (!affine) return;
        weight = this->template add_input<Buffer<const float, 1>>("weight");
        if (with_bias) bias = this->template add_input<Buffer<const float, 1>>("bias");
    }
    // Undefined Funcs when absent: the algorithm then uses weight 1, bias 0.
    Func weight_func() const { return weight ? Func(*weight) : Func(); }
    Func bias_func() const { return bias ? Func(*bias) : Func(); }
    void estimate_affine() {
        if (weight) estimate_c(*weight);
        if (bias) estimate_c(*bias);
    }

    bool gpu() const { return this->get_target().has_gpu_feature(); }
    std::string backend() const { return gpu() ? "gpu" : "cpu"; }
    Type accumulator_type() const {
        const std::string a = accumulator;
        if (a == "float32") return Float(32);
        if (a == "float64") return Float(64);
        if (a != "auto") throw std::runtime_error("accumulator must be auto, float32 or float64");
        return Float(64);
    }

    // THE SCHEDULE: the CPU or GPU schedule of `kernel` with this machine's parameters; a
    // parameter of this kernel that no schedule read fails the build (a typo in a tuned file).
    template<typename CpuSchedule, typename GpuSchedule>
    void apply_schedule(const std::string &kernel, CpuSchedule &&cpu_schedule,
                        GpuSchedule &&gpu_schedule) {
        if (this->using_autoscheduler()) return;
        ScheduleParams sp = ScheduleParams::load(schedule_file);
        if (gpu()) {
            gpu_schedule(sp);
        } else {
            cpu_schedule(sp);
        }
        check_all_params_used(sp, backend(), kernel);
    }
};

class TrainForward : public Bn2dGenerator<TrainForward> {
public:

    Input<Buffer<const float, 4>> x{"x"};
    Input<Buffer<const float, 1>> running_mean{"running_mean"};
    Input<Buffer<const float, 1>> running_var{"running_var"};
    Input<float> eps{"eps"};
    // exponential_average_factor: momentum, or 1/num_batches_tracked when momentum is None.
    Input<float> factor{"factor"};

    Output<Buffer<float, 4>> y{"y"};
    Output<Buffer<float, 1>> saved_mean{"saved_mean"};
    Output<Buffer<float, 1>> saved_invstd{"saved_invstd"};
    Output<Buffer<float, 1>> running_mean_out{"running_mean_out"};
    Output<Buffer<float, 1>> running_var_out{"running_var_out"};

    void configure() { add_affine_inputs(true); }

    void generate() {
        // THE ALGORITHM
        bn2d::TrainForward p = bn2d::train_forward(
            x, weight_func(), bias_func(), running_mean,
            running_var, eps, factor, shape_of(x, accumulator_type()), v);
        y = p.y;
        saved_mean = p.saved_mean;
        saved_invstd = p.saved_invstd;
        running_mean_out = p.running_mean_out;
        running_var_out = p.running_var_out;

        // ESTIMATES
        estimate_nchw(x);
        estimate_nchw(y);
        for (auto *b : {&running_mean, &running_var}) estimate_c(*b);
        for (auto *b : {&saved_mean, &saved_invstd, &running_mean_out, &running_var_out})
            estimate_c(*b);
        estimate_affine();
        eps.set_estimate(1e-5f);
        factor.set_estimate(0.1f);

        apply_schedule(
            "train_fwd",
            [&](const ScheduleParams &sp) { bn2d::cpu::schedule_train_forward(p, v, sp, get_target()); },
            [&](const ScheduleParams &sp) { bn2d::gpu::schedule_train_forward(p, v, sp, get_target()); });
    }
};

class EvalForward : public Bn2dGenerator<EvalForward> {
public:

    Input<Buffer<const float, 4>> x{"x"};
    Input<Buffer<const float, 1>> running_mean{"running_mean"};
    Input<Buffer<const float, 1>> running_var{"running_var"};
    Input<float> eps{"eps"};

    Output<Buffer<float, 4>> y{"y"};

    void configure() { add_affine_inputs(true); }

    void generate() {
        bn2d::EvalForward p =
            bn2d::eval_forward(x, weight_func(), bias_func(),
                               running_mean, running_var, eps, v);
        y = p.y;

        estimate_nchw(x);
        estimate_nchw(y);
        for (auto *b : {&running_mean, &running_var}) estimate_c(*b);
        estimate_affine();
        eps.set_estimate(1e-5f);

        apply_schedule(
            "eval_fwd",
            [&](const ScheduleParams &sp) { bn2d::cpu::schedule_eval_forward(p, v, sp, get_target()); },
            [&](const ScheduleParams &sp) { bn2d::gpu::schedule_eval_forward(p, v, sp, get_target()); });
    }
};

// Backward with an output mask, like ATen's native_batch_norm_backward: a caller that needs
// only grad_input, or only the parameter gradients, gets a kernel that does only that.
//   training: mean/invstd are the forward's saved batch statistics.
//   eval:     mean/invstd are running_mean and 1/sqrt(running_var + eps), computed here.
class Backward : public Bn2dGenerator<Backward> {
public:
    enum class Mode { Train, Eval };
    GeneratorParam<Mode> mode{"mode", Mode::Train, {{"train", Mode::Train}, {"eval", Mode::Eval}}};
    GeneratorParam<bool> grad_input_out{"with_grad_input", true};
    GeneratorParam<bool> grad_params_out{"with_grad_params", true};

    Input<Buffer<const float, 4>> x{"x"};
    Input<Buffer<const float, 4>> grad_out{"grad_out"};
    // training: saved_mean, saved_invstd; eval: running_mean, running_var.
    Input<Buffer<const float, 1>> mean{"mean"};
    Input<Buffer<const float, 1>> invstd_or_var{"invstd_or_var"};
    Input<float> eps{"eps"};  // used in eval mode only
    // Accumulated parameter gradients so far: the outputs are these plus this call's gradient,
    // as autograd accumulates .grad, without a separate pass on the device.
    Input<Buffer<const float, 1>> *grad_weight_in = nullptr, *grad_bias_in = nullptr;

    Output<Buffer<float, 4>> *grad_input = nullptr;
    Output<Buffer<float, 1>> *grad_weight = nullptr, *grad_bias = nullptr;

    void configure() {
        if (!grad_input_out && !grad_params_out)
            throw std::runtime_error("backward: at least one of with_grad_input, with_grad_params");
        if (grad_params_out && !affine)
            throw std::runtime_error("backward: with_grad_params needs affine=true");
        add_affine_inputs(false);
        if (grad_params_out) {
            grad_weight_in = add_input<Buffer<const float, 1>>("grad_weight_in");
            grad_bias_in = add_input<Buffer<const float, 1>>("grad_bias_in");
        }
        if (grad_input_out) grad_input = add_output<Buffer<float, 4>>("grad_input");
        if (grad_params_out) {
            grad_weight = add_output<Buffer<float, 1>>("grad_weight");
            grad_bias = add_output<Buffer<float, 1>>("grad_bias");
        }
    }

    void generate() {
        const bool training = mode == Mode::Train;
        Func invstd("bwd_invstd");
        if (training) {
            invstd(v.c) = invstd_or_var(v.c);
        } else {
            invstd(v.c) = bn2d::inverse_std(invstd_or_var(v.c), eps);
        }
        bn2d::Backward p =
            bn2d::backward(training, grad_input_out, grad_params_out, x, grad_out, mean, invstd,
                           weight_func(), shape_of(x, accumulator_type()), v);
        if (grad_input_out) *grad_input = p.grad_input;
        if (grad_params_out) {
            Func acc_weight("acc_grad_weight"), acc_bias("acc_grad_bias");
            acc_weight(v.c) = (*grad_weight_in)(v.c) + p.grad_weight(v.c);
            acc_bias(v.c) = (*grad_bias_in)(v.c) + p.grad_bias(v.c);
            p.grad_weight = acc_weight;  // the schedule places the outputs
            p.grad_bias = acc_bias;
            *grad_weight = acc_weight;
            *grad_bias = acc_bias;
        }

        estimate_nchw(x);
        estimate_nchw(grad_out);
        estimate_c(mean);
        estimate_c(invstd_or_var);
        eps.set_estimate(1e-5f);
        estimate_affine();
        if (grad_input_out) estimate_nchw(*grad_input);
        if (grad_params_out) {
            estimate_c(*grad_weight), estimate_c(*grad_bias);
            estimate_c(*grad_weight_in), estimate_c(*grad_bias_in);
        }

        const std::string kernel = training ? "train_bwd" : "eval_bwd";
        apply_schedule(
            kernel,
            [&](const ScheduleParams &sp) { bn2d::cpu::schedule_backward(p, kernel, v, sp, get_target()); },
            [&](const ScheduleParams &sp) { bn2d::gpu::schedule_backward(p, kernel, v, sp, get_target()); });
    }
};

}  // namespace

HALIDE_REGISTER_GENERATOR(TrainForward, bn2d_train_forward)
HALIDE_REGISTER_GENERATOR(EvalForward, bn2d_eval_forward)
HALIDE_REGISTER_GENERATOR(Backward, bn2d_backward)
