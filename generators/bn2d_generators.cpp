// Halide Generators for batchnorm2d: training forward, eval forward and backward.
//
// generate() reads as: the algorithm (from bn2d_algorithm.h), estimates, then the schedule
// (from schedules/, chosen by target). What differs between kernel libraries is a
// GeneratorParam; generators/variants.cmake lists the libraries built from them.
//
// Kernels take weight and bias whether or not the module is affine: a non-affine module passes
// its weight of ones and bias of zeros, which gives PyTorch's result exactly ((x - mean) * invstd
// * 1 + 0) at the cost of reading 2*C floats, so affine needs no library of its own.
#include "Halide.h"
#include "bn2d_algorithm.h"
#include "cpu_schedules.h"
#include "gpu_schedules.h"
#include "schedule_params.h"

namespace {

using namespace Halide;
using bn2d::ScheduleParams;

// The schedule kernels a machine file may name (schedules/schedule_params.h).
const bn2d::ScheduleVocabulary kVocabulary{
    {"train_fwd", "eval_fwd", "train_bwd", "eval_bwd"}, bn2d::cpu::kKnobs, bn2d::gpu::kKnobs};

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

// Common to every kernel: the schedule file and the accumulator type.
template<typename Self>
class Bn2dGenerator : public Generator<Self> {
public:
    GeneratorParam<std::string> schedule_file{"schedule_file", ""};
    // Type of the per-channel sums (see bn2d::Extents in bn2d_algorithm.h).
    GeneratorParam<std::string> accumulator{"accumulator", "float64"};

protected:
    bn2d::Vars v;

    bn2d::Extents extents_of(const GeneratorInput<Buffer<const float, 4>> &x) const {
        return {x.dim(0).extent(), x.dim(1).extent(), x.dim(2).extent(), x.dim(3).extent(),
                accumulator_type(), ""};
    }

    Type accumulator_type() const {
        const std::string a = accumulator;
        if (a == "float32") return Float(32);
        if (a == "float64") return Float(64);
        throw std::runtime_error("accumulator must be float32 or float64, got '" + a + "'");
    }

    std::string backend() const {
        const Target t = this->get_target();
        if (t.has_feature(Target::CUDA)) return "cuda";
        if (t.has_feature(Target::OpenCL)) return "opencl";
        if (t.has_gpu_feature()) throw std::runtime_error("no schedule for this GPU API: " + t.to_string());
        return "cpu";
    }

    // THE SCHEDULE: the CPU or GPU schedule of `kernel` with this machine's parameters. The
    // whole machine file is checked first (unknown keys), then the keys of this kernel that its
    // schedule did not read: either fails the build, naming the file, line and key.
    template<typename CpuSchedule, typename GpuSchedule>
    void apply_schedule(const std::string &kernel, CpuSchedule &&cpu_schedule,
                        GpuSchedule &&gpu_schedule) {
        if (this->using_autoscheduler()) return;
        ScheduleParams sp = ScheduleParams::load(schedule_file);
        sp.validate(kVocabulary);
        const std::string be = backend();
        if (be == "cpu") {
            cpu_schedule(sp);
        } else {
            gpu_schedule(sp, be);
        }
        sp.check_all_read(be, kernel);
    }
};

class TrainForwardGenerator : public Bn2dGenerator<TrainForwardGenerator> {
public:
    Input<Buffer<const float, 4>> x{"x"};
    Input<Buffer<const float, 1>> weight{"weight"};
    Input<Buffer<const float, 1>> bias{"bias"};
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

    void generate() {
        // THE ALGORITHM
        bn2d::TrainForward p = bn2d::train_forward(x, weight, bias, running_mean, running_var,
                                                   eps, factor, extents_of(x), v);
        y = p.y;
        saved_mean = p.saved_mean;
        saved_invstd = p.saved_invstd;
        running_mean_out = p.running_mean_out;
        running_var_out = p.running_var_out;

        // ESTIMATES
        estimate_nchw(x);
        estimate_nchw(y);
        for (auto *b : {&weight, &bias, &running_mean, &running_var}) estimate_c(*b);
        for (auto *b : {&saved_mean, &saved_invstd, &running_mean_out, &running_var_out})
            estimate_c(*b);
        eps.set_estimate(1e-5f);
        factor.set_estimate(0.1f);

        // THE SCHEDULE
        const std::string kernel = "train_fwd";
        apply_schedule(
            kernel,
            [&](const ScheduleParams &sp) {
                bn2d::cpu::schedule_train_forward(p, kernel, v, sp, get_target());
            },
            [&](const ScheduleParams &sp, const std::string &be) {
                bn2d::gpu::schedule_train_forward(p, be, kernel, v, sp);
            });
    }
};

class EvalForwardGenerator : public Bn2dGenerator<EvalForwardGenerator> {
public:
    Input<Buffer<const float, 4>> x{"x"};
    Input<Buffer<const float, 1>> weight{"weight"};
    Input<Buffer<const float, 1>> bias{"bias"};
    Input<Buffer<const float, 1>> running_mean{"running_mean"};
    Input<Buffer<const float, 1>> running_var{"running_var"};
    Input<float> eps{"eps"};

    Output<Buffer<float, 4>> y{"y"};

    void generate() {
        bn2d::EvalForward p =
            bn2d::eval_forward(x, weight, bias, running_mean, running_var, eps, extents_of(x), v);
        y = p.y;

        estimate_nchw(x);
        estimate_nchw(y);
        for (auto *b : {&weight, &bias, &running_mean, &running_var}) estimate_c(*b);
        eps.set_estimate(1e-5f);

        const std::string kernel = "eval_fwd";
        apply_schedule(
            kernel,
            [&](const ScheduleParams &sp) {
                bn2d::cpu::schedule_eval_forward(p, kernel, v, sp, get_target());
            },
            [&](const ScheduleParams &sp, const std::string &be) {
                bn2d::gpu::schedule_eval_forward(p, be, kernel, v, sp);
            });
    }
};

// Backward with an output mask, like ATen's native_batch_norm_backward: a caller that needs
// only grad_input, or only the parameter gradients, gets a kernel that does only that.
//   training: mean/stat are the forward's saved batch mean and invstd.
//   eval:     mean/stat are running_mean and running_var.
// A Halide pipeline computes every output it has, so the mask is a GeneratorParam: a runtime
// flag could not skip an output (measured: a zero-extent output breaks the compute_with that
// fuses the parameter gradients into grad_input's loop).
class BackwardGenerator : public Bn2dGenerator<BackwardGenerator> {
public:
    enum class Mode { Train, Eval };
    GeneratorParam<Mode> mode{"mode", Mode::Train, {{"train", Mode::Train}, {"eval", Mode::Eval}}};
    GeneratorParam<bool> with_grad_input{"with_grad_input", true};
    GeneratorParam<bool> with_grad_params{"with_grad_params", true};

    Input<Buffer<const float, 4>> x{"x"};
    Input<Buffer<const float, 4>> grad_out{"grad_out"};
    Input<Buffer<const float, 1>> mean{"mean"};
    Input<Buffer<const float, 1>> stat{"stat"};  // saved invstd (train) or running_var (eval)
    Input<float> eps{"eps"};                      // used in eval mode only
    Input<Buffer<const float, 1>> weight{"weight"};
    // Accumulated parameter gradients so far: the outputs are these plus this call's gradient.
    Input<Buffer<const float, 1>> *grad_weight_in = nullptr, *grad_bias_in = nullptr;

    Output<Buffer<float, 4>> *grad_input = nullptr;
    Output<Buffer<float, 1>> *grad_weight = nullptr, *grad_bias = nullptr;

    void configure() {
        if (!with_grad_input && !with_grad_params)
            throw std::runtime_error("backward: at least one of with_grad_input, with_grad_params");
        if (with_grad_params) {
            grad_weight_in = add_input<Buffer<const float, 1>>("grad_weight_in");
            grad_bias_in = add_input<Buffer<const float, 1>>("grad_bias_in");
        }
        if (with_grad_input) grad_input = add_output<Buffer<float, 4>>("grad_input");
        if (with_grad_params) {
            grad_weight = add_output<Buffer<float, 1>>("grad_weight");
            grad_bias = add_output<Buffer<float, 1>>("grad_bias");
        }
    }

    void generate() {
        const bn2d::BackwardRequest want{mode == Mode::Train, with_grad_input, with_grad_params};
        Func gw_in = grad_weight_in ? Func(*grad_weight_in) : Func();
        Func gb_in = grad_bias_in ? Func(*grad_bias_in) : Func();
        bn2d::Backward p = bn2d::backward(want, x, grad_out, mean, stat, eps, weight, gw_in, gb_in,
                                          extents_of(x), v);
        if (grad_input) *grad_input = p.grad_input;
        if (grad_weight) *grad_weight = p.grad_weight;
        if (grad_bias) *grad_bias = p.grad_bias;

        estimate_nchw(x);
        estimate_nchw(grad_out);
        for (auto *b : {&mean, &stat, &weight}) estimate_c(*b);
        eps.set_estimate(1e-5f);
        if (grad_input) estimate_nchw(*grad_input);
        for (auto *b : {grad_weight, grad_bias})
            if (b) estimate_c(*b);
        for (auto *b : {grad_weight_in, grad_bias_in})
            if (b) estimate_c(*b);

        const std::string kernel = want.training ? "train_bwd" : "eval_bwd";
        apply_schedule(
            kernel,
            [&](const ScheduleParams &sp) {
                bn2d::cpu::schedule_backward(p, kernel, v, sp, get_target());
            },
            [&](const ScheduleParams &sp, const std::string &be) {
                bn2d::gpu::schedule_backward(p, be, kernel, v, sp);
            });
    }
};

}  // namespace

HALIDE_REGISTER_GENERATOR(TrainForwardGenerator, bn2d_train_forward)
HALIDE_REGISTER_GENERATOR(EvalForwardGenerator, bn2d_eval_forward)
HALIDE_REGISTER_GENERATOR(BackwardGenerator, bn2d_backward)
