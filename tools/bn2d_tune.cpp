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
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "Halide.h"
#include "cpu_schedules.h"
#include "gpu_schedules.h"
#include "problems.h"
#include "schedule_params.h"
#include "stream_floor.h"

namespace {

using namespace Halide;
using bn2d::KnobRange;
using bn2d::problems::Shape;
using Clock = std::chrono::steady_clock;

const std::vector<std::string> kAllKernels = {"train_fwd",      "eval_fwd",       "train_bwd",
                                              "eval_bwd",       "train_fwd_nhwc", "eval_fwd_nhwc",
                                              "train_bwd_nhwc", "eval_bwd_nhwc"};
const std::vector<std::string> kAllAutoschedulers = {"Mullapudi2016", "Adams2019", "Li2018"};
// A candidate replaces the current one only if it is this much faster: the same binary measured
// twice on this VM moves by a few percent.
constexpr double kMinGain = 0.03;

[[noreturn]] void usage_error(const std::string &what) {
    throw std::invalid_argument(what + " (see --help)");
}

std::vector<std::string> split_list(const std::string &s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

// ---- options ------------------------------------------------------------------------------------
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
        if (d != "f32" && d != "bf16" && d != "f16" && d != "f64")
            usage_error("unknown dtype '" + d + "' in --dtypes (f32, bf16, f16, f64)");
    if (o.kernels.empty() || o.dtypes.empty()) usage_error("--kernels and --dtypes need an item");
    // --machine and --out default in main (they need the target); so does --base when --out
    // names an existing file.
    if (o.base.empty()) o.base = source_dir + "/schedules/machines/default.params";
    return o;
}

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

// --shapes: a file of descriptors, or set:<name> for a set of tests/problems.txt.
std::vector<Shape> load_shapes(const std::string &file) {
    if (file.empty()) return bn2d::problems::load("suite");
    if (file.rfind("set:", 0) == 0) return bn2d::problems::load(file.substr(4));
    std::ifstream in(file);
    if (!in) usage_error("cannot read --shapes file '" + file + "'");
    std::vector<Shape> out;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line.substr(0, line.find('#')));
        std::string descriptor;
        if (words >> descriptor) out.push_back(bn2d::problems::parse_descriptor(descriptor));
    }
    if (out.empty()) usage_error("no problem in --shapes file '" + file + "'");
    return out;
}

// ---- kernels ------------------------------------------------------------------------------------
// A schedule kernel (the name a machine file uses) and the Generator that builds it: the kernel
// with every output, which runs every loop the knobs shape.
struct KernelSpec {
    std::string name, generator, layout;
    std::map<std::string, std::string> params;
    bool backward;
};

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

using Candidate = std::map<std::string, int>;  // knob -> value

std::string candidate_key(const Candidate &c) {
    std::string s;
    for (const auto &[knob, v] : c) s += (s.empty() ? "" : ",") + knob + "=" + std::to_string(v);
    return s;
}

// ---- data ---------------------------------------------------------------------------------------
int dtype_bytes(const std::string &d) { return d == "f64" ? 8 : d == "f32" ? 4 : 2; }

// Raw memory, freed with its last owner. Large blocks are 2 MB aligned and asked for huge pages:
// first-touching a suite's tensors in 4 KB pages took 13 s of kernel time here (500K faults).
struct Memory {
    std::shared_ptr<uint8_t> bytes;
    size_t size = 0;
    static Memory allocate(size_t n) {
        constexpr size_t kHuge = size_t(2) << 20;
        const size_t align = n >= kHuge ? kHuge : 64;
        Memory m;
        m.size = (std::max<size_t>(n, 1) + align - 1) / align * align;
        m.bytes.reset(static_cast<uint8_t *>(std::aligned_alloc(align, m.size)), std::free);
        if (!m.bytes) throw std::bad_alloc();
        if (align == kHuge) madvise(m.bytes.get(), m.size, MADV_HUGEPAGE);  // a hint; may fail
        return m;
    }
};

// Random values (never zero) of `type` for `name`: statistics and weights in their ranges.
void fill_random(const Memory &m, size_t count, Type type, const std::string &name, uint32_t seed) {
    std::mt19937 rng(seed ^ static_cast<uint32_t>(std::hash<std::string>()(name)));
    float lo = -2.0f, hi = 2.0f;
    if (name == "stat" || name == "running_var") lo = 0.5f, hi = 2.0f;
    if (name == "weight") lo = 0.5f, hi = 1.5f;
    std::uniform_real_distribution<float> dist(lo, hi);
    // Generating 25M values with mt19937 takes a while: a pattern of 4096 values, each copy
    // offset, keeps the tensor varied and cheap to fill.
    std::vector<float> pattern(4096);
    for (float &v : pattern) {
        v = dist(rng);
        if (v == 0.0f) v = 0.25f;
    }
    uint8_t *p = m.bytes.get();
    for (size_t i = 0; i < count; ++i) {
        const float v = pattern[i % 4096] + 1e-3f * static_cast<float>((i / 4096) % 7);
        if (type == Float(32))
            reinterpret_cast<float *>(p)[i] = v;
        else if (type == Float(64))
            reinterpret_cast<double *>(p)[i] = v;
        else if (type == Float(16))
            reinterpret_cast<uint16_t *>(p)[i] = float16_t(v).to_bits();
        else
            reinterpret_cast<uint16_t *>(p)[i] = bfloat16_t(v).to_bits();  // bf16 as uint16
    }
}

// Element i of a buffer's memory as a double (bfloat16 is stored as uint16).
double element(const Runtime::Buffer<> &b, size_t i) {
    const uint8_t *p = static_cast<const uint8_t *>(b.data());
    const Type t = b.type();
    if (t == Float(32)) return reinterpret_cast<const float *>(p)[i];
    if (t == Float(64)) return reinterpret_cast<const double *>(p)[i];
    const uint16_t bits = reinterpret_cast<const uint16_t *>(p)[i];
    if (t == Float(16)) return static_cast<float>(float16_t::make_from_bits(bits));
    return static_cast<float>(bfloat16_t::make_from_bits(bits));
}

// One problem: a shape in a dtype.
struct Problem {
    Shape shape;
    std::string dtype;
    std::string name() const { return shape.name() + " " + dtype; }
};

// The halide_buffer_t view of a dense tensor. As the runtime presents it to our kernels
// (runtime/src/halide_glue.cpp): nchw, a plane as one row of H*W (w, 1, c, n); nhwc, N*H*W rows
// of C values. As plain 4-D (w, h, c, n), the shape the Generators' estimates describe: the
// "nchw4d" and "nhwc4d" views, which the autoschedulers get (their schedules assume it: Adams2019
// tiles h and reads outside an h extent of 1).
std::vector<halide_dimension_t> tensor_dims(const Shape &s, const std::string &view) {
    const int N = int(s.n), C = int(s.c), H = int(s.h), W = int(s.w), HW = H * W;
    const int total = int(std::min<int64_t>(s.numel(), INT32_MAX));
    if (view == "nhwc")
        return {{0, N * HW, C, 0}, {0, 1, total, 0}, {0, C, 1, 0}, {0, 1, total, 0}};
    if (view == "nchw4d") return {{0, W, 1, 0}, {0, H, W, 0}, {0, C, HW, 0}, {0, N, C * HW, 0}};
    if (view == "nhwc4d") return {{0, W, C, 0}, {0, H, W * C, 0}, {0, C, 1, 0}, {0, N, HW * C, 0}};
    return {{0, HW, 1, 0}, {0, 1, HW, 0}, {0, C, HW, 0}, {0, N, C * HW, 0}};
}

// ---- timing -------------------------------------------------------------------------------------
double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double geomean(const std::vector<double> &v) {
    double s = 0;
    for (double x : v) s += std::log(x);
    return std::exp(s / double(v.size()));
}

// The message of the exception in flight: Halide's compile errors (Halide::Error, not a
// std::exception) and everything else.
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

// ---- the tuner ------------------------------------------------------------------------------------
std::string g_jit_error;  // the last message from a JIT-compiled kernel
void jit_error(JITUserContext *, const char *msg) { g_jit_error = msg; }

struct Eval {
    double score = INFINITY;     // geomean of time / floor; inf: rejected
    std::vector<double> ratios;  // per problem
    std::string error;
};

// A kernel JIT-compiled for one dtype, and its arguments in call order.
struct Kernel {
    Callable callable;
    std::vector<Internal::AbstractGenerator::ArgInfo> args;
    std::string view;  // how its 4-D buffers are presented (tensor_dims)
    // Problems it fails (an autoscheduled kernel whose tiles outgrow a small input): skipped.
    std::set<std::string> failing;
};
using Compiled = std::map<std::string, Kernel>;  // dtype -> kernel: one schedule, every dtype

class Tuner {
public:
    Tuner(Options o, std::vector<Shape> shapes, Target target)
        : o_(std::move(o)), shapes_(std::move(shapes)), target_(target), gpu_(o_.backend != "cpu"),
          floor_pool_(int(std::thread::hardware_concurrency())) {
        for (const Shape &s : shapes_)
            for (const std::string &d : o_.dtypes) problems_.push_back({s, d});
        base_ = bn2d::ScheduleParams::load(o_.base);
        handlers_.custom_error = jit_error;
    }

    int run();

private:
    // -- compiling --
    // The kernel of `k` for every dtype, scheduled by `params_file` or by an autoscheduler.
    Compiled compile(const KernelSpec &k, const std::string &params_file,
                     const std::string &autoscheduler = "") {
        Compiled c;
        for (const std::string &dtype : o_.dtypes)
            c[dtype] = compile_one(k, dtype, params_file, autoscheduler);
        return c;
    }
    Kernel compile_one(const KernelSpec &k, const std::string &dtype,
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

    // A machine file's keys: the base's, and over them <backend>.<kernel>.<knob> of `tuned`.
    std::map<std::string, std::string>
    machine_keys(const std::map<std::string, Candidate> &tuned) const {
        std::map<std::string, std::string> keys;
        for (const auto &[key, v] : base_.items()) keys[key] = v;
        for (const auto &[kernel, c] : tuned)
            for (const auto &[knob, v] : c)
                keys[o_.backend + "." + kernel + "." + knob] = std::to_string(v);
        return keys;
    }

    // A machine file: the base with this candidate's keys for kernel k.
    std::string write_params(const std::string &kernel, const Candidate &c,
                             const std::string &path) {
        std::ofstream out(path);
        for (const auto &[key, v] : machine_keys({{kernel, c}})) out << key << " = " << v << "\n";
        if (!out) throw std::runtime_error("cannot write " + path);
        return path;
    }

    // -- data --
    Runtime::Buffer<> &input(const std::string &name, Type type, int dims, const Problem &p,
                             const std::string &view) {
        // Aliases as the runtime passes them with the fused ops off: residual = x, y = grad_out.
        const std::string data = name == "residual" ? "x" : name == "y" ? "grad_out" : name;
        const std::string key = data + "/" + p.name() + "/" + (dims == 4 ? view : "") + "/" +
                                std::to_string(type.code()) + std::to_string(type.bits());
        auto it = buffers_.find(key);
        if (it != buffers_.end()) return it->second;
        const size_t count = dims == 4 ? size_t(p.shape.numel()) : size_t(p.shape.c);
        const std::string mem_key = data + "/" + p.name() + "/" + std::to_string(dims);
        if (!memory_.count(mem_key)) {
            memory_[mem_key] = Memory::allocate(count * type.bytes());
            fill_random(memory_[mem_key], count, p.dtype == "bf16" && dims == 4 ? BFloat(16) : type,
                        data, uint32_t(o_.seed));
        }
        Runtime::Buffer<> b = wrap(memory_[mem_key], type, dims, p, view);
        if (gpu_) to_device(b);
        return buffers_.emplace(key, std::move(b)).first->second;
    }

    Runtime::Buffer<> wrap(const Memory &m, Type type, int dims, const Problem &p,
                           const std::string &view) {
        if (dims == 1) {
            halide_dimension_t d{0, int(p.shape.c), 1, 0};
            return Runtime::Buffer<>(type, m.bytes.get(), 1, &d);
        }
        auto d = tensor_dims(p.shape, view);
        return Runtime::Buffer<>(type, m.bytes.get(), 4, d.data());
    }

    template<typename T>
    void to_device(Runtime::Buffer<T> &b) {
        const DeviceAPI api = o_.backend == "cuda" ? DeviceAPI::CUDA : DeviceAPI::OpenCL;
        b.set_device_dirty(false);  // the host copy is the one to send (outputs: just poisoned)
        b.set_host_dirty();
        if (b.copy_to_device(get_device_interface_for_device_api(api, target_)) != 0)
            throw std::runtime_error("copying an input to the device failed: " + g_jit_error);
    }

    // Outputs of one compiled kernel on one problem (owned here, poisoned before checked runs).
    struct Outputs {
        std::vector<Memory> memory;
        std::vector<Runtime::Buffer<>> buffers;
    };
    Outputs make_outputs(const Compiled &compiled, const Problem &p) {
        Outputs out;
        const Kernel &k = compiled.at(p.dtype);
        for (const auto &a : k.args) {
            if (a.dir != Internal::ArgInfoDirection::Output) continue;
            const Type t = a.types.at(0);
            const size_t count = a.dimensions == 4 ? size_t(p.shape.numel()) : size_t(p.shape.c);
            out.memory.push_back(Memory::allocate(count * t.bytes()));
            out.buffers.push_back(wrap(out.memory.back(), t, a.dimensions, p, k.view));
        }
        return out;
    }
    void poison(Outputs &out) {
        for (size_t i = 0; i < out.buffers.size(); ++i) {
            std::memset(out.memory[i].bytes.get(), 0xff, out.memory[i].size);  // NaN everywhere
            if (gpu_) to_device(out.buffers[i]);
        }
    }

    // Calls c on p with `outputs`; throws with the kernel's message on failure.
    void call(const Compiled &compiled, const Problem &p, Outputs &outputs) {
        const Kernel &c = compiled.at(p.dtype);
        std::vector<const void *> argv;
        std::vector<double> doubles;
        std::vector<uint8_t> bools;
        doubles.reserve(c.args.size());
        bools.reserve(c.args.size());
        JITUserContext ctx;
        ctx.handlers = handlers_;
        JITUserContext *ctx_ptr = &ctx;
        argv.push_back(&ctx_ptr);
        size_t next_output = 0;
        for (const auto &a : c.args) {
            if (a.dir == Internal::ArgInfoDirection::Output) {
                argv.push_back(outputs.buffers.at(next_output++).raw_buffer());
            } else if (a.kind == Internal::ArgInfoKind::Buffer) {
                argv.push_back(input(a.name, a.types.at(0), a.dimensions, p, c.view).raw_buffer());
            } else if (a.types.at(0) == Bool()) {
                bools.push_back(0);  // add_residual, relu: off (the common case tuned here)
                argv.push_back(&bools.back());
            } else {
                doubles.push_back(a.name == "eps" ? 1e-5 : 0.1);  // eps, factor (momentum)
                argv.push_back(&doubles.back());
            }
        }
        g_jit_error.clear();
        const int rc = c.callable.call_argv_fast(argv.size(), argv.data());
        if (rc != 0)
            throw std::runtime_error("kernel failed (" + std::to_string(rc) + "): " + g_jit_error);
        if (gpu_)
            for (auto &b : outputs.buffers) b.device_sync();
    }

    // -- the floor --
    struct FloorData {
        Memory x, dy, out;
        int64_t floats;
        Runtime::Buffer<float> bx, bdy, bout;
    };
    FloorData &floor_data(const Problem &p, bool backward) {
        const std::string key = p.name();  // forward uses x and out, backward also dy
        auto it = floor_.find(key);
        if (it != floor_.end()) return it->second;
        FloorData f;
        f.floats = (p.shape.numel() * dtype_bytes(p.dtype) + 3) / 4;
        for (Memory *m : {&f.x, &f.dy, &f.out}) {
            *m = Memory::allocate(size_t(f.floats) * 4);
            fill_random(*m, size_t(f.floats), Float(32), "floor", uint32_t(o_.seed));
        }
        if (gpu_) {
            halide_dimension_t d{0, int(f.floats), 1, 0};
            f.bx = Runtime::Buffer<float>(reinterpret_cast<float *>(f.x.bytes.get()), 1, &d);
            f.bdy = Runtime::Buffer<float>(reinterpret_cast<float *>(f.dy.bytes.get()), 1, &d);
            f.bout = Runtime::Buffer<float>(reinterpret_cast<float *>(f.out.bytes.get()), 1, &d);
            for (Runtime::Buffer<float> *b : {&f.bx, &f.bdy, &f.bout}) to_device(*b);
        }
        return floor_.emplace(key, std::move(f)).first->second;
    }
    void run_floor(const Problem &p, bool backward) {
        FloorData &f = floor_data(p, backward);
        if (!gpu_) {
            floor_pool_.run(reinterpret_cast<const float *>(f.x.bytes.get()),
                            backward ? reinterpret_cast<const float *>(f.dy.bytes.get()) : nullptr,
                            reinterpret_cast<float *>(f.out.bytes.get()), f.floats, 1.0001f, 0.5f,
                            bn2d::bench::Stores::streaming);
            return;
        }
        Callable &copy = gpu_copy(backward);
        JITUserContext ctx;
        ctx.handlers = handlers_;
        const int rc = backward ? copy(&ctx, f.bx, f.bdy, 1.0001f, 0.5f, f.bout)
                                : copy(&ctx, f.bx, 1.0001f, 0.5f, f.bout);
        if (rc != 0) throw std::runtime_error("device copy failed: " + g_jit_error);
        f.bout.device_sync();
    }
    // The GPU floor: y = a*x + b (forward), dx = a*x + b*dy (backward), in blocks of 256.
    Callable &gpu_copy(bool backward) {
        Callable &c = backward ? gpu_copy_bwd_ : gpu_copy_fwd_;
        if (c.defined()) return c;
        ImageParam x(Float(32), 1, "x"), dy(Float(32), 1, "dy");
        Param<float> a("a"), b("b");
        Var i("i"), io("io"), ii("ii");
        Func y("y");
        y(i) = backward ? x(i) * a + dy(i) * b : x(i) * a + b;
        y.gpu_tile(i, io, ii, 256, TailStrategy::GuardWithIf);
        c = backward ? y.compile_to_callable({x, dy, a, b}, target_)
                     : y.compile_to_callable({x, a, b}, target_);
        return c;
    }

    // Seconds of one call of `fn`, timed over enough calls to last ~2 ms.
    double time_call(const std::function<void()> &fn, int iters) {
        const auto t0 = Clock::now();
        for (int i = 0; i < iters; ++i) fn();
        return seconds_since(t0) / iters;
    }

    // -- evaluating a candidate --
    // The kernel state while it is tuned: reference outputs per problem (the default schedule's),
    // calls per timing sample.
    struct KernelRun {
        KernelSpec spec;
        std::vector<Problem> problems;  // those this kernel runs on
        std::vector<Outputs> reference;
        std::vector<int> iters;
        std::vector<double> sample_seconds;    // per problem: one timed sample (iters calls)
        std::map<std::string, Eval> evals;     // by candidate key
        std::map<std::string, Compiled> kept;  // default, lowest (score), autoschedulers
        double lowest_score = INFINITY;
        std::string lowest_key;
        std::map<std::string, std::string> kept_error;  // autoscheduler -> why it has no result
        Candidate start, best;
        Eval start_eval, best_eval;
        int measured = 0, replayed = 0;
        std::vector<std::pair<double, double>> trace;  // (elapsed s, best score) after each eval
        double seconds = 0;
        // Output buffers reused by every candidate (allocating and first-touching 100 MB per
        // call would cost more than the call): by view, problem and slot (kernel measured).
        std::map<std::string, Outputs> scratch;
    };

    Outputs &scratch(KernelRun &kr, const Compiled &c, size_t problem, size_t slot) {
        const Problem &p = kr.problems[problem];
        const std::string key =
            c.at(p.dtype).view + "/" + std::to_string(problem) + "/" + std::to_string(slot);
        auto it = kr.scratch.find(key);
        if (it == kr.scratch.end()) it = kr.scratch.emplace(key, make_outputs(c, p)).first;
        return it->second;
    }

    // The default schedule's outputs on every problem: what candidates are checked against.
    void compute_reference(KernelRun &kr) {
        const Compiled &def = kr.kept.at("default");
        for (const Problem &p : kr.problems) {
            kr.reference.push_back(make_outputs(def, p));
            poison(kr.reference.back());
            call(def, p, kr.reference.back());
            if (gpu_)
                for (auto &b : kr.reference.back().buffers) b.copy_to_host();
        }
    }

    // Halide's autoschedulers on kr's Generator, each checked against the reference and kept for
    // the final run, while `budget` seconds last; returns the seconds spent.
    double autoschedule(KernelRun &kr, double budget) {
        const auto start = Clock::now();
        for (const std::string &as : o_.autoschedulers) {
            if (seconds_since(start) > budget) {
                kr.kept_error[as] = "not run: over the baselines' share of the budget";
                continue;
            }
            const auto t0 = Clock::now();
            try {
                Compiled c = compile(kr.spec, o_.base, as);
                std::string failures;
                for (size_t pi = 0; pi < kr.problems.size(); ++pi) {
                    const std::string bad = check_problem(kr, c, pi);
                    if (bad.empty()) continue;
                    c.at(kr.problems[pi].dtype).failing.insert(kr.problems[pi].name());
                    failures += (failures.empty() ? "" : "; ") + bad;
                }
                if (!failures.empty()) kr.kept_error[as] = failures;
                kr.kept[as] = c;
            } catch (...) {
                kr.kept_error[as] = current_error();
            }
            if (kr.kept_error.count(as))
                std::fprintf(stderr, "\n%s, %s (%.1f s): %s\n", kr.spec.name.c_str(), as.c_str(),
                             seconds_since(t0), kr.kept_error[as].c_str());
            progress(kr);
        }
        return seconds_since(start);
    }

    // Runs c on every problem into poisoned outputs and compares with the reference; returns
    // the first mismatch, or "".
    std::string check(KernelRun &kr, const Compiled &c) {
        for (size_t pi = 0; pi < kr.problems.size(); ++pi) {
            const std::string bad = check_problem(kr, c, pi);
            if (!bad.empty()) return bad;
        }
        return "";
    }
    std::string check_problem(KernelRun &kr, const Compiled &c, size_t pi) {
        const Problem &p = kr.problems[pi];
        Outputs &out = scratch(kr, c, pi, 0);
        poison(out);
        try {
            call(c, p, out);
        } catch (const std::exception &e) {
            return p.name() + ": " + e.what();
        }
        const double tol = p.dtype == "f64" ? 1e-9 : p.dtype == "f32" ? 1e-4 : 1.6e-2;
        for (size_t oi = 0; oi < out.buffers.size(); ++oi) {
            Runtime::Buffer<> &got = out.buffers[oi], &want = kr.reference[pi].buffers[oi];
            if (gpu_) got.copy_to_host();
            const size_t n = got.number_of_elements();
            for (size_t i = 0; i < n; ++i) {
                const double g = element(got, i), w = element(want, i);
                if (!(std::fabs(g - w) <= tol * (1 + std::fabs(w)))) {
                    std::ostringstream msg;
                    msg << p.name() << ": wrong output " << oi << " at element " << i << ": " << g
                        << " (default schedule: " << w << ")";
                    return msg.str();
                }
            }
        }
        return "";
    }

    // Per-problem ratios time / floor of the compiled kernels, measured interleaved: each
    // repetition times every kernel and the floor once, in a random order, and a kernel's ratio
    // is the median over repetitions of its time / that repetition's floor. Pairing within a
    // repetition cancels the memory bandwidth's drift on a shared machine (it moves by up to
    // 1.7x within a run here); a sample lasts at least 5 ms.
    std::vector<std::vector<double>> measure(KernelRun &kr, const std::vector<const Compiled *> &cs,
                                             int reps) {
        std::vector<std::vector<double>> ratios(cs.size());
        std::mt19937 order_rng(uint32_t(o_.seed));
        for (size_t pi = 0; pi < kr.problems.size(); ++pi) {
            const Problem &p = kr.problems[pi];
            auto fails = [&](size_t i) { return cs[i]->at(p.dtype).failing.count(p.name()) > 0; };
            std::vector<Outputs *> outs;
            for (size_t i = 0; i < cs.size(); ++i) {
                outs.push_back(&scratch(kr, *cs[i], pi, i));
                if (!fails(i))
                    call(*cs[i], p, *outs.back());  // warm-up: pools, caches, first touch
            }
            run_floor(p, kr.spec.backward);
            if (kr.iters[pi] == 0) {  // calls per sample: at least 5 ms of the default
                const double t = time_call([&] { call(*cs[0], p, *outs[0]); }, 1);
                kr.iters[pi] = std::clamp(int(std::ceil(5e-3 / std::max(t, 1e-7))), 1, 10000);
            }
            const int iters = kr.iters[pi];
            std::vector<std::vector<double>> times(cs.size() + 1);
            std::vector<size_t> order(cs.size() + 1);
            for (size_t i = 0; i < order.size(); ++i) order[i] = i;
            const auto reps_start = Clock::now();
            for (int r = 0; r < reps; ++r) {
                std::shuffle(order.begin(), order.end(), order_rng);
                for (size_t i : order) {
                    if (i < cs.size() && fails(i)) {
                        times[i].push_back(NAN);
                    } else if (i == cs.size()) {
                        times[i].push_back(
                            time_call([&] { run_floor(p, kr.spec.backward); }, iters));
                    } else {
                        times[i].push_back(time_call([&] { call(*cs[i], p, *outs[i]); }, iters));
                    }
                }
            }
            kr.sample_seconds[pi] = seconds_since(reps_start) / double(reps * order.size());
            for (size_t i = 0; i < cs.size(); ++i) {
                std::vector<double> paired;
                for (int r = 0; r < reps; ++r) paired.push_back(times[i][r] / times.back()[r]);
                ratios[i].push_back(fails(i) ? NAN : median(paired));
            }
        }
        return ratios;
    }

    // The score of candidate c (compiled, checked and measured, or replayed from the journal);
    // `precompiled` is its kernel when the caller has it. The lowest-scoring kernel is kept.
    Eval evaluate(KernelRun &kr, const Candidate &c, const Compiled *precompiled = nullptr) {
        const std::string key = candidate_key(c);
        if (auto it = kr.evals.find(key); it != kr.evals.end()) return it->second;
        if (auto it = journal_.find(kr.spec.name + " " + key); it != journal_.end()) {
            ++kr.replayed;
            kr.evals[key] = it->second;
            note_trace(kr, it->second);
            return it->second;
        }
        if (!precompiled) {  // a search candidate: did the plan start it within the budget?
            ++searched_;
            if (elapsed() + eval_cost(kr) > o_.budget_seconds) ++searched_past_budget_;
        }
        const auto t0 = Clock::now();
        Eval e;
        Compiled compiled;
        try {
            // The default schedule is the reference: nothing to check it against.
            compiled = precompiled ? *precompiled : compile(kr.spec, candidate_file(kr, c));
            if (!precompiled) e.error = check(kr, compiled);
            if (e.error.empty()) {
                e.ratios = measure(kr, {&compiled}, o_.reps)[0];
                e.score = geomean(e.ratios);
            }
        } catch (...) {
            e.error = current_error();
        }
        ++kr.measured;
        kr.seconds += seconds_since(t0);
        kr.evals[key] = e;
        if (e.score < kr.lowest_score) {
            kr.lowest_score = e.score;
            kr.lowest_key = key;
            kr.kept["lowest"] = compiled;
        }
        journal_append(kr.spec.name, key, e);
        note_trace(kr, e);
        return e;
    }

    std::string candidate_file(KernelRun &kr, const Candidate &c) {
        return write_params(kr.spec.name, c, work_dir_ + "/candidate.params");
    }

    void note_trace(KernelRun &kr, const Eval &e) {
        const double best = std::min(kr.trace.empty() ? INFINITY : kr.trace.back().second, e.score);
        kr.trace.emplace_back(elapsed(), best);
        progress(kr);
    }

    // -- journal --
    std::string config_line() const {
        std::ostringstream s;
        s << "config backend=" << o_.backend << " target=" << target_.to_string()
          << " search=" << o_.search << " seed=" << o_.seed << " reps=" << o_.reps << " dtypes=";
        for (auto &d : o_.dtypes) s << d << ";";
        s << " problems=";
        for (auto &p : shapes_) s << p.name() << ";";
        s << " base=";
        for (auto &[k, v] : base_.items()) s << k << "=" << v << ";";
        return s.str();
    }
    void journal_open() {
        journal_path_ = o_.out + ".journal";
        std::ifstream in(journal_path_);
        std::string line;
        const std::string config = config_line();
        bool matches = false;
        if (in && std::getline(in, line)) matches = line == config;
        if (matches) {
            while (std::getline(in, line)) {
                std::istringstream w(line);
                std::string tag, kernel, key;
                w >> tag;
                if (tag == "elapsed") {
                    w >> prior_elapsed_;
                } else if (tag == "eval" && (w >> kernel >> key)) {
                    Eval e;
                    w >> e.score;
                    double r;
                    while (w >> r) e.ratios.push_back(r);
                    journal_[kernel + " " + key] = e;
                } else if (tag == "fail" && (w >> kernel >> key)) {
                    Eval e;
                    std::getline(w, e.error);
                    journal_[kernel + " " + key] = e;
                }
            }
            std::fprintf(stderr, "resuming %s: %zu candidates measured, %.0f s used\n",
                         journal_path_.c_str(), journal_.size(), prior_elapsed_);
        } else if (in) {
            std::fprintf(stderr, "%s is from other options: starting afresh\n",
                         journal_path_.c_str());
        }
        in.close();
        journal_out_.open(journal_path_, matches ? std::ios::app : std::ios::trunc);
        if (!matches) journal_out_ << config << "\n";
        journal_out_.flush();
    }
    void journal_append(const std::string &kernel, const std::string &key, const Eval &e) {
        if (e.error.empty()) {
            journal_out_ << "eval " << kernel << " " << key << " " << e.score;
            for (double r : e.ratios) journal_out_ << " " << r;
        } else {
            std::string msg = e.error;
            std::replace(msg.begin(), msg.end(), '\n', ' ');
            journal_out_ << "fail " << kernel << " " << key << " " << msg;
        }
        journal_out_ << "\nelapsed " << elapsed() << "\n";
        journal_out_.flush();
    }

    // -- time and progress --
    double elapsed() const { return prior_elapsed_ + seconds_since(start_); }
    double left() const { return o_.budget_seconds - elapsed(); }

    void progress(const KernelRun &kr) {
        const double frac = std::clamp(elapsed() / o_.budget_seconds, 0.0, 1.0);
        const int width = 24, done = int(frac * width);
        char line[256];
        std::snprintf(line, sizeof line,
                      "[%s%s] %3d%% %4.0fs ETA %4.0fs | %-14s %3d measured | best %.2fx floor "
                      "(default %.2fx)",
                      std::string(done, '#').c_str(), std::string(width - done, '.').c_str(),
                      int(frac * 100), elapsed(), std::max(0.0, left()), kr.spec.name.c_str(),
                      kr.measured + kr.replayed, kr.trace.empty() ? NAN : kr.trace.back().second,
                      kr.start_eval.score);
        if (tty_) {
            std::fprintf(stderr, "\r%s\033[K", line);
        } else if (Clock::now() - last_print_ > std::chrono::seconds(10)) {
            std::fprintf(stderr, "%s\n", line);
            last_print_ = Clock::now();
        }
    }

    // -- the search --
    // Time one more evaluation of this kernel needs: its compile and measurement so far.
    double eval_cost(const KernelRun &kr) const {
        return kr.measured ? kr.seconds / kr.measured : 0;
    }
    bool can_afford(const KernelRun &kr, double deadline) const {
        return elapsed() + eval_cost(kr) < deadline;
    }

    // Coordinate descent from kr.best, then from random points while the kernel's share of the
    // budget lasts (the descent is local; a restart may find another basin). Deterministic given
    // the scores, so a resumed run replays the same path from the journal.
    void search_descent(KernelRun &kr, double deadline) {
        std::mt19937 rng(search_seed(kr));
        Candidate best = kr.best;
        Eval best_eval = kr.best_eval;
        for (int restart = 0; can_afford(kr, deadline); ++restart) {
            Candidate from = best;
            Eval from_eval = best_eval;
            if (restart > 0) {
                from = random_candidate(kr, rng);
                if (kr.evals.count(candidate_key(from))) {
                    if (restart > 64) break;  // the grid is exhausted around here
                    continue;
                }
                from_eval = evaluate(kr, from);
            }
            auto [cur, cur_eval] = descend(kr, from, from_eval, deadline);
            if (cur_eval.score < best_eval.score * (1 - kMinGain)) best = cur, best_eval = cur_eval;
        }
        finish_search(kr, best, best_eval);
    }

    // One descent: for each knob, step to the neighbouring value of its range while that gains
    // more than kMinGain, first up, then down; sweep until a sweep changes nothing.
    std::pair<Candidate, Eval> descend(KernelRun &kr, Candidate cur, Eval cur_eval,
                                       double deadline) {
        const auto &ranges = knob_ranges(o_.backend);
        for (bool changed = true; changed;) {
            changed = false;
            for (const auto &[knob, value] : Candidate(cur)) {
                std::vector<int> values = bn2d::knob_range(ranges, knob).values;
                if (std::find(values.begin(), values.end(), value) == values.end()) {
                    values.push_back(value);
                    std::sort(values.begin(), values.end());
                }
                const long at = std::find(values.begin(), values.end(), cur[knob]) - values.begin();
                for (int dir : {+1, -1}) {
                    bool moved = false;
                    for (long j = at + dir; j >= 0 && j < long(values.size()); j += dir) {
                        if (!can_afford(kr, deadline)) return {cur, cur_eval};
                        Candidate cand = cur;
                        cand[knob] = values[size_t(j)];
                        Eval e = evaluate(kr, cand);
                        if (!(e.score < cur_eval.score * (1 - kMinGain))) break;
                        cur = cand;
                        cur_eval = e;
                        moved = changed = true;
                    }
                    if (moved) break;
                }
            }
        }
        return {cur, cur_eval};
    }

    uint32_t search_seed(const KernelRun &kr) const {
        return uint32_t(o_.seed) * 7919u + uint32_t(std::hash<std::string>()(kr.spec.name));
    }
    Candidate random_candidate(const KernelRun &kr, std::mt19937 &rng) const {
        Candidate c;
        for (const auto &[knob, v] : kr.start) {
            const auto &vals = bn2d::knob_range(knob_ranges(o_.backend), knob).values;
            c[knob] = vals[rng() % vals.size()];
        }
        return c;
    }

    // Uniform samples of the grid: the baseline the descent is measured against.
    void search_random(KernelRun &kr, double deadline) {
        std::mt19937 rng(search_seed(kr));
        Candidate best = kr.best;
        Eval best_eval = kr.best_eval;
        size_t grid = 1;
        for (const auto &[knob, v] : kr.start)
            grid *= bn2d::knob_range(knob_ranges(o_.backend), knob).values.size();
        for (size_t tries = 0; tries < 4 * grid && can_afford(kr, deadline); ++tries) {
            Candidate cand = random_candidate(kr, rng);
            if (kr.evals.count(candidate_key(cand))) continue;
            Eval e = evaluate(kr, cand);
            if (e.score < best_eval.score) best = cand, best_eval = e;
        }
        finish_search(kr, best, best_eval);
    }

    void finish_search(KernelRun &kr, const Candidate &best, const Eval &e) {
        kr.best = best;
        kr.best_eval = e;
    }

    // Options, problems and output.
    Options o_;
    std::vector<Shape> shapes_;
    std::vector<Problem> problems_;
    Target target_;
    bool gpu_;
    bn2d::ScheduleParams base_;
    JITHandlers handlers_;
    bn2d::bench::StreamPool floor_pool_;
    Callable gpu_copy_fwd_, gpu_copy_bwd_;
    std::map<std::string, Memory> memory_;
    std::map<std::string, Runtime::Buffer<>> buffers_;
    std::map<std::string, FloorData> floor_;
    std::string work_dir_, journal_path_;
    std::map<std::string, Eval> journal_;
    std::ofstream journal_out_;
    double prior_elapsed_ = 0;
    // The budget's own accounting (tests check it; wall-clock time is only reported): search
    // candidates started in this run, and those whose expected end was past the budget.
    int searched_ = 0, searched_past_budget_ = 0;
    Clock::time_point start_ = Clock::now(), last_print_{};
    bool tty_ = isatty(2);

    // Results, in kernel order.
    struct Result {
        std::string kernel;
        std::vector<std::string> problems;
        Candidate default_values, tuned;
        bool kept_default = false;  // tuned lost to default in the final run
        std::vector<double> default_ratio, tuned_ratio;
        std::map<std::string, std::vector<double>> auto_ratio;
        std::map<std::string, std::string> auto_error;
        int measured = 0, replayed = 0;
        std::vector<std::pair<double, double>> trace;
        double default_score = 0, search_best = 0;
    };
    std::vector<Result> results_;

    void write_outputs(bool baselines_measured);
};

int Tuner::run() {
    // Without the device, Halide's runtime would abort at the first copy: say so instead.
    if (gpu_ && !Halide::host_supports_target_device(target_))
        throw std::runtime_error("no usable " + o_.backend + " device here (target " +
                                 target_.to_string() + ")");
    char tmpl[] = "/tmp/bn2d_tune.XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("cannot create a temporary directory");
    work_dir_ = tmpl;
    journal_open();
    std::fprintf(stderr, "tuning %zu kernels x %zu problems on %s (%s), budget %.0f s\n",
                 o_.kernels.size(), problems_.size(), o_.machine.c_str(),
                 target_.to_string().c_str(), o_.budget_seconds);

    // Phase 1: every kernel's default schedule, compiled and measured (the costs that size the
    // rest of the run).
    std::vector<KernelRun> runs;
    double compile_seconds = 0;  // compiling the defaults
    for (const std::string &name : o_.kernels) {
        KernelRun kr;
        kr.spec = kernel_spec(name);
        // As the runtime dispatches (runtime/src/halide_glue.cpp, kMinNhwcChannels): channels_last
        // tensors with fewer than 16 channels run the strided (NCHW-scheduled) kernels, so the
        // NHWC kernels are tuned on the problems they run.
        for (const Problem &p : problems_)
            if (kr.spec.layout != "nhwc" || p.shape.c >= 16) kr.problems.push_back(p);
        if (kr.problems.empty()) {
            std::fprintf(stderr, "%s: no problem with 16 or more channels: not tuned\n",
                         name.c_str());
            continue;
        }
        kr.iters.assign(kr.problems.size(), 0);
        kr.sample_seconds.assign(kr.problems.size(), 0);
        for (const std::string &knob : searched_knobs(o_.backend, name)) {
            const KnobRange &r = bn2d::knob_range(knob_ranges(o_.backend), knob);
            kr.start[knob] = base_.get(o_.backend, name, knob, r.fallback);
        }
        const auto t0 = Clock::now();
        Compiled def = compile(kr.spec, o_.base);
        kr.kept["default"] = def;
        compile_seconds += seconds_since(t0);
        kr.start_eval = evaluate(kr, kr.start, &def);
        if (!kr.start_eval.error.empty())
            throw std::runtime_error(name + ": the default schedule fails: " + kr.start_eval.error);
        // Replayed from the journal: one repetition still times the problems (the final run's
        // reserve is sized from it).
        if (kr.replayed) measure(kr, {&def}, 1);
        kr.seconds = seconds_since(t0);  // the first evaluation's cost: a compile, a measurement
        kr.best = kr.start;
        kr.best_eval = kr.start_eval;
        kr.scratch.clear();  // one kernel's buffers at a time: memory is slow to first touch
        runs.push_back(std::move(kr));
    }
    if (runs.empty()) throw std::runtime_error("no kernel to tune on these problems");
    // The final run measures default, tuned, autoschedulers and the floor, with more reps.
    const int final_reps = std::max(o_.reps, 7);
    // Its cost: per kernel and problem, (reps + a warm-up) samples of each implementation and
    // the floor, with a margin for the machine's noise.
    auto final_cost = [&](size_t implementations) {
        double sample = 0;
        for (const KernelRun &kr : runs)
            for (double t : kr.sample_seconds) sample += t;
        return 1.3 * sample * double(implementations + 1) * (final_reps + 1);
    };
    bool baselines = !o_.autoschedulers.empty();
    const double compile_estimate = compile_seconds / double(runs.size());
    if (baselines) {
        // Autoscheduling runs a search of its own: give the baselines at most a third of what
        // is left after the final run's reserve, judged from one default compile.
        const size_t n = o_.autoschedulers.size();
        const double cost = double(n * runs.size()) * std::max(compile_estimate, 0.5) * 2.0 +
                            final_cost(2 + n) - final_cost(2);
        if (cost > (left() - final_cost(2)) / 3) {
            std::fprintf(stderr,
                         "\nbudget too small for Halide's autoschedulers (about %.0f s): "
                         "not measured\n",
                         cost);
            baselines = false;
        }
    }
    double baseline_budget = baselines ? (left() - final_cost(2)) / 3 : 0;
    const size_t implementations = 2 + (baselines ? o_.autoschedulers.size() : 0);
    // The final run, and a compile of each kernel's best candidate if it was not kept.
    const double reserve =
        final_cost(implementations) + compile_estimate * double(runs.size()) / 2 + 2.0;

    // Phase 2: the search, kernel by kernel.
    for (size_t i = 0; i < runs.size(); ++i) {
        KernelRun &kr = runs[i];
        compute_reference(kr);
        if (baselines) baseline_budget -= autoschedule(kr, baseline_budget);
        const double share = (left() - reserve) / double(runs.size() - i);
        const double deadline = elapsed() + std::max(0.0, share);
        if (o_.search == "descent")
            search_descent(kr, deadline);
        else
            search_random(kr, deadline);
        kr.scratch.clear();    // memory back: the next kernel's buffers
        kr.reference.clear();  // only candidates are checked against it
        if (tty_) std::fprintf(stderr, "\n");
        std::fprintf(stderr,
                     "%-15s %3d candidates (%d replayed): default %.3fx, best %.3fx floor  %s\n",
                     kr.spec.name.c_str(), kr.measured + kr.replayed, kr.replayed,
                     kr.start_eval.score, kr.best_eval.score, candidate_key(kr.best).c_str());
    }

    // Phase 3: default, tuned and baselines measured interleaved, in one run.
    std::fprintf(stderr, "final measurement (%d reps, interleaved)...\n", final_reps);
    const double final_start = elapsed();
    for (KernelRun &kr : runs) {
        Result r;
        r.kernel = kr.spec.name;
        for (const Problem &p : kr.problems) r.problems.push_back(p.name());
        r.default_values = kr.start;
        r.tuned = kr.best;
        r.measured = kr.measured;
        r.replayed = kr.replayed;
        r.trace = kr.trace;
        r.default_score = kr.start_eval.score;
        r.search_best = kr.best_eval.score;
        const std::string best_key = candidate_key(kr.best);
        if (best_key == candidate_key(kr.start))
            kr.kept["best"] = kr.kept["default"];
        else if (best_key == kr.lowest_key)
            kr.kept["best"] = kr.kept["lowest"];
        else
            kr.kept["best"] = compile(kr.spec, candidate_file(kr, kr.best));
        // Tuned = default: measured once (the same kernel twice would show the noise as a gain).
        const bool same = best_key == candidate_key(kr.start);
        std::vector<const Compiled *> cs{&kr.kept["default"]};
        std::vector<std::string> names{"default"};
        if (!same) cs.push_back(&kr.kept["best"]), names.push_back("tuned");
        if (baselines) {
            for (const std::string &as : o_.autoschedulers) {
                if (kr.kept.count(as)) {
                    cs.push_back(&kr.kept[as]);
                    names.push_back(as);
                } else {
                    r.auto_error[as] = kr.kept_error.count(as) ? kr.kept_error[as] : "not run";
                }
            }
        }
        auto ratios = measure(kr, cs, final_reps);
        kr.scratch.clear();
        r.default_ratio = ratios[0];
        r.tuned_ratio = same ? ratios[0] : ratios[1];
        for (size_t i = same ? 1 : 2; i < names.size(); ++i) {
            r.auto_ratio[names[i]] = ratios[i];
            if (kr.kept_error.count(names[i])) r.auto_error[names[i]] = kr.kept_error[names[i]];
        }
        // A tuned candidate that loses to the default in the final run was a noise winner.
        if (geomean(r.tuned_ratio) > geomean(r.default_ratio)) {
            r.kept_default = candidate_key(r.tuned) != candidate_key(r.default_values);
            r.tuned = r.default_values;
            r.tuned_ratio = r.default_ratio;
        }
        results_.push_back(std::move(r));
    }
    const double final_seconds = elapsed() - final_start;
    write_outputs(baselines);
    std::remove((work_dir_ + "/candidate.params").c_str());
    rmdir(work_dir_.c_str());
    // What the tuner decided is its to keep; how long the machine took for the fixed phases (the
    // defaults' compile, the final run) is not, so it is reported, not promised.
    std::fprintf(stderr,
                 "budget: %d search candidates started, %d expected to end past the budget; "
                 "final run %.0f s (reserved %.0f s)\n",
                 searched_, searched_past_budget_, final_seconds, reserve);
    std::fprintf(stderr, "done in %.0f s of %.0f s: %s\n", elapsed(), o_.budget_seconds,
                 o_.out.c_str());
    return 0;
}

// A path inside the source tree, relative to it (what the header and report show).
std::string relative(const std::string &path) {
    const std::string root = std::string(BN2D_SOURCE_DIR) + "/";
    return path.rfind(root, 0) == 0 ? path.substr(root.size()) : path;
}

std::string today() {
    std::time_t t = std::time(nullptr);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
    return buf;
}

void Tuner::write_outputs(bool baselines_measured) {
    const std::string halide_version = std::to_string(HALIDE_VERSION_MAJOR) + "." +
                                       std::to_string(HALIDE_VERSION_MINOR) + "." +
                                       std::to_string(HALIDE_VERSION_PATCH);
    std::map<std::string, Candidate> tuned;
    for (const Result &r : results_) tuned[r.kernel] = r.tuned;

    std::ostringstream h;
    h << "# Tuned schedule parameters for " << o_.machine
      << ", written by scripts/tune.sh (rerun it\n"
      << "# rather than editing by hand). Build with -DBN2D_SCHEDULE_MACHINE=" << o_.machine
      << ".\n"
      << "# Key and knob reference: schedules/machines/default.params.\n"
      << "#   machine  " << o_.machine << " (" << std::thread::hardware_concurrency()
      << " threads), target " << target_.to_string() << "\n"
      << "#   date     " << today() << ", Halide " << halide_version << "\n"
      << "#   tuned    backend " << o_.backend << ", search " << o_.search << ", budget "
      << o_.budget_seconds << " s (used " << int(elapsed()) << " s), dtypes ";
    for (size_t i = 0; i < o_.dtypes.size(); ++i) h << (i ? "," : "") << o_.dtypes[i];
    h << ", base " << relative(o_.base) << "\n"
      << "# Time / floor per kernel and problem, default vs tuned"
      << (baselines_measured ? " vs Halide's autoschedulers" : "")
      << ", measured in one run\n# (medians, interleaved with the floor):\n";
    char row[512];
    std::snprintf(row, sizeof row, "#   %-15s %-22s %8s %8s", "kernel", "problem", "default",
                  "tuned");
    h << row;
    if (baselines_measured)
        for (const std::string &as : o_.autoschedulers)
            h << " " << std::string(14 - std::min<size_t>(14, as.size()), ' ') << as;
    h << "\n";
    for (const Result &r : results_) {
        for (size_t pi = 0; pi < r.problems.size(); ++pi) {
            std::snprintf(row, sizeof row, "#   %-15s %-22s %7.2fx %7.2fx", r.kernel.c_str(),
                          r.problems[pi].c_str(), r.default_ratio[pi], r.tuned_ratio[pi]);
            h << row;
            if (baselines_measured) {
                for (const std::string &as : o_.autoschedulers) {
                    auto it = r.auto_ratio.find(as);
                    if (it == r.auto_ratio.end() || std::isnan(it->second[pi]))
                        std::snprintf(row, sizeof row, " %14s", "failed");
                    else
                        std::snprintf(row, sizeof row, " %13.2fx", it->second[pi]);
                    h << row;
                }
            }
            h << "\n";
        }
        if (r.kept_default)
            h << "#   (" << r.kernel
              << ": the search's best lost to the default in this run: default kept)\n";
    }
    std::ofstream out(o_.out);
    out << h.str() << "\n";
    for (const auto &[key, v] : machine_keys(tuned)) out << key << " = " << v << "\n";
    if (!out) throw std::runtime_error("cannot write " + o_.out);
    out.close();

    // The report's data (scripts/tune_report.py draws the markdown table and the plot).
    std::ofstream js(o_.report + ".json");
    auto q = [](const std::string &s) {
        std::string r = "\"";
        for (char c : s) {
            if (c == '"' || c == '\\') r += '\\';
            if (c == '\n') {
                r += "\\n";
                continue;
            }
            r += c;
        }
        return r + "\"";
    };
    js << "{\n  \"machine\": " << q(o_.machine) << ",\n  \"target\": " << q(target_.to_string())
       << ",\n  \"date\": " << q(today()) << ",\n  \"halide\": " << q(halide_version)
       << ",\n  \"backend\": " << q(o_.backend) << ",\n  \"search\": " << q(o_.search)
       << ",\n  \"budget_seconds\": " << o_.budget_seconds << ",\n  \"used_seconds\": " << elapsed()
       << ",\n  \"params_file\": " << q(relative(o_.out)) << ",\n  \"problems\": [";
    for (size_t i = 0; i < problems_.size(); ++i) js << (i ? ", " : "") << q(problems_[i].name());
    js << "],\n  \"kernels\": [\n";
    auto arr = [&](const std::vector<double> &v) {
        std::ostringstream s;
        s << "[";
        for (size_t i = 0; i < v.size(); ++i) {
            s << (i ? ", " : "");
            if (std::isnan(v[i]))
                s << "null";  // a baseline that failed on this problem
            else
                s << v[i];
        }
        return s.str() + "]";
    };
    for (size_t ki = 0; ki < results_.size(); ++ki) {
        const Result &r = results_[ki];
        js << "    {\"kernel\": " << q(r.kernel) << ", \"problems\": [";
        for (size_t i = 0; i < r.problems.size(); ++i) js << (i ? ", " : "") << q(r.problems[i]);
        js << "], \"default\": " << q(candidate_key(r.default_values))
           << ", \"tuned\": " << q(candidate_key(r.tuned))
           << ", \"kept_default\": " << (r.kept_default ? "true" : "false")
           << ", \"measured\": " << r.measured << ", \"replayed\": " << r.replayed
           << ",\n     \"search_default_score\": " << r.default_score
           << ", \"search_best_score\": " << r.search_best
           << ",\n     \"ratios\": {\"default\": " << arr(r.default_ratio)
           << ", \"tuned\": " << arr(r.tuned_ratio);
        for (const auto &[as, v] : r.auto_ratio) js << ", " << q(as) << ": " << arr(v);
        js << "},\n     \"autoscheduler_errors\": {";
        bool first = true;
        for (const auto &[as, e] : r.auto_error) {
            js << (first ? "" : ", ") << q(as) << ": " << q(e.substr(0, 300));
            first = false;
        }
        js << "},\n     \"trace\": [";
        for (size_t i = 0; i < r.trace.size(); ++i)
            js << (i ? ", " : "") << "[" << r.trace[i].first << ", "
               << (std::isfinite(r.trace[i].second) ? r.trace[i].second : -1) << "]";
        js << "]}" << (ki + 1 < results_.size() ? "," : "") << "\n";
    }
    js << "  ]\n}\n";
}

}  // namespace

int main(int argc, char **argv) {
    try {
        Options o = parse_options(argc, argv, BN2D_SOURCE_DIR);
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
        Tuner tuner(o, load_shapes(o.shapes_file), target);
        return tuner.run();
    } catch (const Halide::Error &e) {
        std::fprintf(stderr, "\nbn2d_tune: Halide error: %s\n", e.what());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "\nbn2d_tune: %s\n", e.what());
    }
    return 1;
}
