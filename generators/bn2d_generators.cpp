// Halide Generators for batchnorm2d: training forward, eval forward and backward.
//
// generate() reads as: the algorithm (from bn2d_algorithm.h), estimates, then the schedule
// (from schedules/, chosen by target and layout). What differs between kernel libraries is a
// GeneratorParam; generators/variants.cmake lists the libraries built from them:
//   dtype   element type of x, y, dy, dx: f32, bf16, f16 or f64. Per-channel inputs and outputs
//           (weight, bias, running and saved statistics, parameter gradients) are float32, or
//           float64 for f64: PyTorch's mixed-precision rule, 16-bit activations with float32
//           parameters; the module rounds 16-bit parameters itself (runtime/src/batchnorm2d.cpp).
//   layout  nchw (W stride 1), nhwc (C stride 1: channels_last) or strided (any strides,
//           including negative and zero input strides). The algorithm is the same; the layout
//           is a stride constraint on every 4-D buffer and picks the schedule.
// Scalars (eps, factor) are float64 in every variant, so every dtype's kernels of one op have
// the same C signature and the runtime's dispatch table is one array per op.
//
// Kernels take weight and bias whether or not the module is affine: a non-affine module passes
// its weight of ones and bias of zeros, which gives PyTorch's result exactly ((x - mean) * invstd
// * 1 + 0) at the cost of reading 2*C values, so affine needs no library of its own.
#include "Halide.h"
#include "bn2d_algorithm.h"
#include "cpu_schedules.h"
#include "gpu_schedules.h"
#include "schedule_params.h"

namespace {

using namespace Halide;
using bn2d::ScheduleParams;

// What a machine file may name (schedules/schedule_params.h), from the variant table: the
// schedule kernels (NHWC kernels have schedules and knobs of their own; strided uses the NCHW
// schedules), each backend's knobs, and the run-time thresholds' knobs (bn2d_threshold).
std::vector<std::string> runtime_knobs() {
    std::vector<std::string> knobs;
    for (const char *k : bn2d::vocabulary::kRuntimeKnobs)
        if (*k) knobs.push_back(k);
    return knobs;
}
const bn2d::ScheduleVocabulary kVocabulary{
    {std::begin(bn2d::vocabulary::kScheduleKernels), std::end(bn2d::vocabulary::kScheduleKernels)},
    bn2d::cpu::kKnobs,
    bn2d::gpu::kKnobs,
    runtime_knobs()};

// Seed problem (20x100x35x45) as estimates, for the autoschedulers and the autotuner.
constexpr int kEstN = 20, kEstC = 100, kEstH = 35, kEstW = 45;

// Where a reduction kernel's schedule sums (the sums_order GeneratorParam).
enum class SumsOrder { ByChannel, Memory };
const std::map<std::string, SumsOrder> kSumsOrders{{"by_channel", SumsOrder::ByChannel},
                                                   {"memory", SumsOrder::Memory}};

using Tensor4 = GeneratorInput<Buffer<>>;
using Vector1 = GeneratorInput<Buffer<>>;
using Tensor4Out = GeneratorOutput<Buffer<>>;
using Vector1Out = GeneratorOutput<Buffer<>>;

// Common to every kernel: dtype, layout and schedule file, and the
// constructors of typed inputs and outputs (called from configure(), in signature order).
template<typename Self>
class Bn2dGenerator : public Generator<Self> {
public:
    GeneratorParam<std::string> dtype{"dtype", "f32"};
    GeneratorParam<std::string> layout{"layout", "nchw"};
    GeneratorParam<std::string> schedule_file{"schedule_file", ""};
    // The streaming-store build of a kernel (cmake/Bn2dKernels.cmake, STREAMING in
    // generators/variants.cmake): tools/streaming_stores.py marks the vector stores of its
    // tensor output non-temporal, which x86 only allows on addresses aligned to the vector.
    GeneratorParam<bool> streaming_stores{"streaming_stores", false};

protected:
    bn2d::Vars v;

    Type element_type() const {
        const std::string d = dtype;
        if (d == "f32") return Float(32);
        if (d == "bf16") return BFloat(16);
        if (d == "f16") return Float(16);
        if (d == "f64") return Float(64);
        throw std::runtime_error("dtype must be f32, bf16, f16 or f64, got '" + d + "'");
    }
    // Per-channel values and arithmetic: float32, or float64 for float64 tensors.
    Type compute_type() const { return element_type() == Float(64) ? Float(64) : Float(32); }

    // Type of the per-channel sums (see bn2d::Extents in bn2d_algorithm.h): float64 for every
    // dtype, so that a channel's sums stay exact enough over any batch (docs/numerics.md).
    Type accumulator_type() const { return Float(64); }

    bn2d::Layout layout_value() const { return bn2d::layout_from_name(layout); }
    bool nhwc() const { return layout_value() == bn2d::Layout::nhwc; }

    // A 4-D tensor argument (w, h, c, n) of the element type, with the layout's stride rule.
    template<typename T>
    void constrain(T &t) {
        switch (layout_value()) {
        case bn2d::Layout::nchw: return;  // Halide's default: dim 0 (W) stride 1
        case bn2d::Layout::nhwc: t.dim(0).set_stride(Expr()), t.dim(2).set_stride(1); return;
        case bn2d::Layout::strided: t.dim(0).set_stride(Expr()); return;
        }
    }
    // bfloat16 tensors are uint16 bit patterns (bn2d::Extents::storage).
    Type storage_type() const { return bn2d::Extents::storage_type(element_type()); }
    Tensor4 *tensor_in(const std::string &name) {
        return this->template add_input<Buffer<>>(name, storage_type(), 4);
    }
    Vector1 *vector_in(const std::string &name) {
        return this->template add_input<Buffer<>>(name, compute_type(), 1);
    }
    GeneratorInput<double> *scalar_in(const std::string &name) {
        return this->template add_input<double>(name);
    }
    Tensor4Out *tensor_out(const std::string &name) {
        return this->template add_output<Buffer<>>(name, storage_type(), 4);
    }
    Vector1Out *vector_out(const std::string &name) {
        return this->template add_output<Buffer<>>(name, compute_type(), 1);
    }
    // What processes of a synchronized batch norm exchange: float64 in every variant.
    GeneratorOutput<Buffer<>> *exchange_out(const std::string &name, int dims) {
        return this->template add_output<Buffer<>>(name, Float(64), dims);
    }
    GeneratorInput<Buffer<>> *exchange_in(const std::string &name, int dims) {
        return this->template add_input<Buffer<>>(name, Float(64), dims);
    }

    GeneratorInput<bool> *flag_in(const std::string &name) {
        return this->template add_input<bool>(name);
    }

    // The inputs of both forward kernels, in signature order (braced initialization runs the
    // constructors left to right). The fused epilogue y = relu(bn(x) + residual) is switched
    // at run time (bn2d::Epilogue): with add_residual false the runtime passes x as residual.
    struct ForwardInputs {
        Tensor4 *x, *residual;
        Vector1 *weight, *bias, *running_mean, *running_var;
        GeneratorInput<double> *eps;
        GeneratorInput<bool> *add_residual, *relu;

        bn2d::Epilogue epilogue() const { return {*residual, *add_residual, *relu}; }
        void set_scalar_estimates() {
            eps->set_estimate(1e-5);
            add_residual->set_estimate(false);
            relu->set_estimate(false);
        }
    };
    ForwardInputs forward_inputs() {
        return {tensor_in("x"),    tensor_in("residual"),     vector_in("weight"),
                vector_in("bias"), vector_in("running_mean"), vector_in("running_var"),
                scalar_in("eps"),  flag_in("add_residual"),   flag_in("relu")};
    }

    bn2d::Extents extents_of(Tensor4 &x) const {
        bn2d::Extents e{x.dim(0).extent(), x.dim(1).extent(),  x.dim(2).extent(),
                        x.dim(3).extent(), accumulator_type(), ""};
        e.element = element_type();
        e.compute = compute_type();
        return e;
    }

    // For streaming_stores: the kernel checks, before it runs, that every full vector it stores
    // to `out` starts on a 64-byte line (the host aligned, the innermost rows and every stride
    // a whole number of lines), so that a call that does not hold gets an error instead of a
    // fault. The runtime calls these kernels only when it holds (runtime/src/dispatch.cpp).
    void require_line_aligned(Tensor4Out &out, const std::string &name) {
        if (!streaming_stores) return;
        const int per_line = 64 / storage_type().bytes();
        out.set_host_alignment(64);
        for (int d = 0; d < 4; ++d) {
            Expr stride = out.dim(d).stride(), extent = out.dim(d).extent();
            Expr ok =
                extent == 1 || stride % per_line == 0 || (stride == 1 && extent % per_line == 0);
            this->add_requirement(ok, "streaming stores: dimension ", d, " of ", name, " (extent ",
                                  extent, ", stride ", stride,
                                  ") does not keep vectors on 64-byte lines");
        }
    }

    // Estimates (the seed problem) and layout constraints for every argument.
    void set_estimates(const std::vector<Tensor4 *> &tensors, const std::vector<Tensor4Out *> &outs,
                       const std::vector<Vector1 *> &vectors,
                       const std::vector<Vector1Out *> &vouts) {
        for (Tensor4 *t : tensors) {
            t->set_estimates({{0, kEstW}, {0, kEstH}, {0, kEstC}, {0, kEstN}});
            constrain(*t);
        }
        for (Tensor4Out *t : outs) {
            t->set_estimates({{0, kEstW}, {0, kEstH}, {0, kEstC}, {0, kEstN}});
            constrain(*t);
        }
        for (Vector1 *b : vectors) b->set_estimates({{0, kEstC}});
        for (Vector1Out *b : vouts) b->set_estimates({{0, kEstC}});
    }

    // The memory-order sums are a CPU schedule of NCHW rows (the split strategy's kernels).
    void require_memory_order_target() const {
        if (backend() != "cpu" || nhwc())
            throw std::runtime_error("sums_order=memory: CPU kernels of the nchw layout only");
    }

    std::string backend() const {
        const Target t = this->get_target();
        if (t.has_feature(Target::CUDA)) return "cuda";
        if (t.has_feature(Target::OpenCL)) return "opencl";
        if (t.has_gpu_feature())
            throw std::runtime_error("no schedule for this GPU API: " + t.to_string());
        return "cpu";
    }

    // The CPU schedule's accumulator width for a kernel (lanes * accumulators): the partial
    // sums an algorithm that interleaves them (bn2d::Extents::row_lanes) keeps per row.
    int cpu_accumulator_width(const std::string &kernel) const {
        const bn2d::cpu::Knobs k =
            bn2d::cpu::knobs(ScheduleParams::load(schedule_file), kernel, this->get_target());
        return k.lanes * k.accumulators;
    }

    // THE SCHEDULE: the CPU or GPU schedule of `op` for this layout with this machine's
    // parameters. The whole machine file is checked first (unknown keys), then the keys of this
    // schedule kernel that its schedule did not read: either fails the build, naming the file,
    // line and key.
    template<typename CpuSchedule, typename GpuSchedule>
    void apply_schedule(const std::string &op, CpuSchedule &&cpu_schedule,
                        GpuSchedule &&gpu_schedule) {
        if (this->using_autoscheduler()) return;
        ScheduleParams sp = ScheduleParams::load(schedule_file);
        sp.validate(kVocabulary);
        const std::string be = backend();
        const bn2d::Layout l = bn2d::schedule_layout(layout_value());
        const std::string kernel = bn2d::schedule_kernel(op, l);
        if (be == "cpu") {
            cpu_schedule(sp, kernel, l);
            // Row chunks start at multiples of `chunk` (or end at the row's end): whole lines.
            // Read only in streaming builds, so the unread-key check stays as it was elsewhere.
            if (streaming_stores) {
                const int chunk =
                    sp.get("cpu", kernel, "chunk",
                           bn2d::knob_range(bn2d::cpu::kKnobRanges, "chunk").fallback);
                if (chunk % 64 != 0)
                    throw std::runtime_error("streaming_stores: cpu." + kernel + ".chunk = " +
                                             std::to_string(chunk) + " must be a multiple of 64");
            }
        } else {
            gpu_schedule(sp, be, kernel, l);
        }
        sp.check_all_read(be, kernel);
    }
};

class TrainForwardGenerator : public Bn2dGenerator<TrainForwardGenerator> {
public:
    ForwardInputs in;
    // exponential_average_factor: momentum, or 1/num_batches_tracked when momentum is None.
    GeneratorInput<double> *factor;

    Tensor4Out *y;
    Vector1Out *saved_mean, *saved_invstd, *running_mean_out, *running_var_out;

    void configure() {
        in = forward_inputs();
        factor = scalar_in("factor");
        y = tensor_out("y");
        saved_mean = vector_out("saved_mean");
        saved_invstd = vector_out("saved_invstd");
        running_mean_out = vector_out("running_mean_out");
        running_var_out = vector_out("running_var_out");
    }

    void generate() {
        // THE ALGORITHM
        bn2d::TrainForward p =
            bn2d::train_forward(*in.x, *in.weight, *in.bias, *in.running_mean, *in.running_var,
                                *in.eps, *factor, extents_of(*in.x), v, in.epilogue());
        *y = p.y;
        *saved_mean = p.saved_mean;
        *saved_invstd = p.saved_invstd;
        *running_mean_out = p.running_mean_out;
        *running_var_out = p.running_var_out;

        // ESTIMATES AND LAYOUT
        set_estimates({in.x, in.residual}, {y},
                      {in.weight, in.bias, in.running_mean, in.running_var},
                      {saved_mean, saved_invstd, running_mean_out, running_var_out});
        in.set_scalar_estimates();
        factor->set_estimate(0.1);
        require_line_aligned(*y, "y");

        // THE SCHEDULE
        apply_schedule(
            "train_fwd",
            [&](const ScheduleParams &sp, const std::string &kernel, bn2d::Layout l) {
                bn2d::cpu::schedule_train_forward(p, kernel, l, v, sp, get_target(),
                                                  {ImageParam(*in.x)});
            },
            [&](const ScheduleParams &sp, const std::string &be, const std::string &kernel,
                bn2d::Layout l) {
                bn2d::gpu::schedule_train_forward(p, be, kernel, l, v, sp, in.x->dim(0).extent());
            });
    }
};

class EvalForwardGenerator : public Bn2dGenerator<EvalForwardGenerator> {
public:
    ForwardInputs in;
    Tensor4Out *y;

    void configure() {
        in = forward_inputs();
        y = tensor_out("y");
    }

    void generate() {
        bn2d::EvalForward p =
            bn2d::eval_forward(*in.x, *in.weight, *in.bias, *in.running_mean, *in.running_var,
                               *in.eps, extents_of(*in.x), v, in.epilogue());
        *y = p.y;

        set_estimates({in.x, in.residual}, {y},
                      {in.weight, in.bias, in.running_mean, in.running_var}, {});
        in.set_scalar_estimates();
        require_line_aligned(*y, "y");

        apply_schedule(
            "eval_fwd",
            [&](const ScheduleParams &sp, const std::string &kernel, bn2d::Layout l) {
                bn2d::cpu::schedule_eval_forward(p, kernel, l, v, sp, get_target());
            },
            [&](const ScheduleParams &sp, const std::string &be, const std::string &kernel,
                bn2d::Layout l) {
                bn2d::gpu::schedule_eval_forward(p, be, kernel, l, v, sp, in.x->dim(0).extent());
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
    // SyncBatchNorm2d (bn2d_algorithm.h): with_sums also writes this process's sums (float64,
    // (C, 2): sum(dy), then sum(dy * (x - mean))) for the all-reduce; global_sums computes
    // grad_input from every process's, given as `sums` over `count` values per channel.
    GeneratorParam<bool> with_sums{"with_sums", false};
    GeneratorParam<bool> global_sums{"global_sums", false};
    // by_channel: the sums per channel group, channel by channel (every kernel but the split
    // strategy's); memory: in memory order, one partial sum per row position
    // (bn2d::cpu::schedule_channel_sums_in_memory_order; CPU, NCHW, one-level sums).
    GeneratorParam<SumsOrder> sums_order{"sums_order", SumsOrder::ByChannel, kSumsOrders};

    Tensor4 *x, *grad_out;
    // The forward's output, read when relu is on (bn2d::ReluGrad); else the runtime passes
    // grad_out, whose cache lines the kernel reads anyway.
    Tensor4 *y;
    Vector1 *mean, *stat;         // stat: saved invstd (train) or running_var (eval)
    GeneratorInput<double> *eps;  // used in eval mode only
    GeneratorInput<bool> *relu;
    Vector1 *weight;
    // Accumulated parameter gradients so far: the outputs are these plus this call's gradient.
    Vector1 *grad_weight_in = nullptr, *grad_bias_in = nullptr;
    GeneratorInput<Buffer<>> *sums = nullptr;
    GeneratorInput<double> *count = nullptr;

    Tensor4Out *grad_input = nullptr;
    Vector1Out *grad_weight = nullptr, *grad_bias = nullptr;
    GeneratorOutput<Buffer<>> *local_sums = nullptr;

    void configure() {
        if (!with_grad_input && !with_grad_params)
            throw std::runtime_error("backward: at least one of with_grad_input, with_grad_params");
        if (global_sums && (mode != Mode::Train || with_grad_params || !with_grad_input))
            throw std::runtime_error("backward: global_sums is for training grad_input alone");
        if (with_sums && (mode != Mode::Train || global_sums))
            throw std::runtime_error("backward: with_sums is for training with local sums");
        x = tensor_in("x");
        grad_out = tensor_in("grad_out");
        y = tensor_in("y");
        mean = vector_in("mean");
        stat = vector_in("stat");
        eps = scalar_in("eps");
        relu = flag_in("relu");
        weight = vector_in("weight");
        if (with_grad_params) {
            grad_weight_in = vector_in("grad_weight_in");
            grad_bias_in = vector_in("grad_bias_in");
        }
        if (global_sums) {
            sums = exchange_in("sums", 2);
            count = scalar_in("count");
        }
        if (with_grad_input) grad_input = tensor_out("grad_input");
        if (with_grad_params) {
            grad_weight = vector_out("grad_weight");
            grad_bias = vector_out("grad_bias");
        }
        if (with_sums) local_sums = exchange_out("local_sums", 2);
    }

    void generate() {
        bn2d::BackwardRequest want{mode == Mode::Train, with_grad_input, with_grad_params,
                                   with_sums};
        if (sums) {
            want.global_sums = Func("global_sums");
            want.global_sums(v.c) = Tuple((*sums)(v.c, 0), (*sums)(v.c, 1));
            want.global_count = *count;
        }
        Func gw_in = grad_weight_in ? Func(*grad_weight_in) : Func();
        Func gb_in = grad_bias_in ? Func(*grad_bias_in) : Func();
        const bool memory_order = sums_order == SumsOrder::Memory;
        if (memory_order) require_memory_order_target();
        bn2d::Extents e = extents_of(*x);
        // Gradient sums in two levels, each row in float32 and the rows in float64
        // (bn2d::grad_sums), where they apply: CPU kernels of NCHW and strided float32 and
        // 16-bit tensors (GPU and NHWC kernels add every value in float64).
        if (!memory_order && backend() == "cpu" && !nhwc() && e.compute == Float(32) &&
            e.acc == Float(64))
            e.row_lanes = cpu_accumulator_width(want.training ? "train_bwd" : "eval_bwd");
        bn2d::Backward p = bn2d::backward(want, *x, *grad_out, *mean, *stat, *eps, *weight, gw_in,
                                          gb_in, e, v, {*y, *relu});
        if (grad_input) *grad_input = p.grad_input;
        if (grad_weight) *grad_weight = p.grad_weight;
        if (grad_bias) *grad_bias = p.grad_bias;
        if (local_sums) *local_sums = p.local_sums;

        std::vector<Tensor4Out *> outs;
        if (grad_input) outs.push_back(grad_input);
        std::vector<Vector1 *> vectors{mean, stat, weight};
        std::vector<Vector1Out *> vouts;
        if (grad_weight) {
            vectors.insert(vectors.end(), {grad_weight_in, grad_bias_in});
            vouts = {grad_weight, grad_bias};
        }
        if (local_sums) local_sums->set_estimates({{0, kEstC}, {0, 2}});
        if (sums) {
            sums->set_estimates({{0, kEstC}, {0, 2}});
            count->set_estimate(double(kEstN) * kEstH * kEstW);
        }
        set_estimates({x, grad_out, y}, outs, vectors, vouts);
        eps->set_estimate(1e-5);
        relu->set_estimate(false);
        if (grad_input) require_line_aligned(*grad_input, "grad_input");

        apply_schedule(
            want.training ? "train_bwd" : "eval_bwd",
            [&](const ScheduleParams &sp, const std::string &kernel, bn2d::Layout l) {
                bn2d::cpu::schedule_backward(
                    p, kernel, l, v, sp, get_target(),
                    {ImageParam(*x), ImageParam(*grad_out), ImageParam(*y)}, memory_order);
            },
            [&](const ScheduleParams &sp, const std::string &be, const std::string &kernel,
                bn2d::Layout l) {
                bn2d::gpu::schedule_backward(p, be, kernel, l, v, sp, x->dim(0).extent());
            });
    }
};

// SyncBatchNorm2d's forward, before the all-gather: this process's partial statistics
// (bn2d::partial_stats), {count, mean, M2} per channel in float64.
class PartialStatsGenerator : public Bn2dGenerator<PartialStatsGenerator> {
public:
    // As BackwardGenerator's: memory is the split strategy's statistics kernel.
    GeneratorParam<SumsOrder> sums_order{"sums_order", SumsOrder::ByChannel, kSumsOrders};
    Tensor4 *x;
    GeneratorOutput<Buffer<>> *partial;  // (C, 3): counts, means, M2s

    void configure() {
        x = tensor_in("x");
        partial = exchange_out("partial", 2);
    }

    void generate() {
        const bool memory_order = sums_order == SumsOrder::Memory;
        if (memory_order) require_memory_order_target();
        bn2d::PartialStats p = bn2d::partial_stats(*x, extents_of(*x), v);
        *partial = p.partial;

        set_estimates({x}, {}, {}, {});
        partial->set_estimates({{0, kEstC}, {0, 3}});
        partial->dim(1).set_bounds(0, 3);
        // The reduction of training forward: its knobs.
        apply_schedule(
            "train_fwd",
            [&](const ScheduleParams &sp, const std::string &kernel, bn2d::Layout l) {
                bn2d::cpu::schedule_partial_stats(p, kernel, l, v, sp, get_target(), memory_order);
            },
            [&](const ScheduleParams &sp, const std::string &be, const std::string &kernel,
                bn2d::Layout l) { bn2d::gpu::schedule_partial_stats(p, be, kernel, l, v, sp); });
    }
};

// SyncBatchNorm2d's forward, after the all-gather: the merged statistics, the saved ones and
// the running update (bn2d::sync_statistics). Per channel only, so one library per
// per-channel type (dtype f32 serves bfloat16 and float16 tensors too); no tensor, no layout.
class SyncStatisticsGenerator : public Bn2dGenerator<SyncStatisticsGenerator> {
public:
    GeneratorInput<Buffer<>> *gathered;  // (C, 3, processes): every process's partial stats
    Vector1 *running_mean, *running_var;
    GeneratorInput<double> *eps, *factor;
    Vector1Out *mean, *var, *saved_invstd, *running_mean_out, *running_var_out;

    void configure() {
        gathered = exchange_in("gathered", 3);
        running_mean = vector_in("running_mean");
        running_var = vector_in("running_var");
        eps = scalar_in("eps");
        factor = scalar_in("factor");
        mean = vector_out("mean");
        var = vector_out("var");
        saved_invstd = vector_out("saved_invstd");
        running_mean_out = vector_out("running_mean_out");
        running_var_out = vector_out("running_var_out");
    }

    void generate() {
        Expr C = running_mean->dim(0).extent();
        bn2d::Extents e{Expr(), Expr(), C, Expr(), accumulator_type(), ""};
        e.element = element_type();
        e.compute = compute_type();
        bn2d::SyncStatistics p = bn2d::sync_statistics(
            *gathered, gathered->dim(2).extent(), *running_mean, *running_var, *eps, *factor, e, v);
        *mean = p.o.mean;
        *var = p.var;
        *saved_invstd = p.o.saved_invstd;
        *running_mean_out = p.o.running_mean_out;
        *running_var_out = p.o.running_var_out;

        gathered->set_estimates({{0, kEstC}, {0, 3}, {0, 4}});
        gathered->dim(1).set_bounds(0, 3);
        set_estimates({}, {}, {running_mean, running_var},
                      {mean, var, saved_invstd, running_mean_out, running_var_out});
        eps->set_estimate(1e-5);
        factor->set_estimate(0.1);
        apply_schedule(
            "train_fwd",
            [&](const ScheduleParams &sp, const std::string &kernel, bn2d::Layout) {
                bn2d::cpu::schedule_sync_statistics(p, kernel, v, sp, get_target());
            },
            [&](const ScheduleParams &sp, const std::string &be, const std::string &kernel,
                bn2d::Layout) { bn2d::gpu::schedule_sync_statistics(p, be, kernel, v, sp); });
    }
};

}  // namespace

HALIDE_REGISTER_GENERATOR(TrainForwardGenerator, bn2d_train_forward)
HALIDE_REGISTER_GENERATOR(EvalForwardGenerator, bn2d_eval_forward)
HALIDE_REGISTER_GENERATOR(BackwardGenerator, bn2d_backward)
HALIDE_REGISTER_GENERATOR(PartialStatsGenerator, bn2d_partial_stats)
HALIDE_REGISTER_GENERATOR(SyncStatisticsGenerator, bn2d_sync_statistics)
