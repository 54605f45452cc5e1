// Running and timing kernels: their inputs (made once per problem and dtype), their outputs,
// the floor they are measured against, and the interleaved measurement.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>

#include "tuner.h"

namespace bn2d::tune {

using namespace Halide;

Runtime::Buffer<> &Tuner::input(const std::string &name, Type type, int dims, const Problem &p,
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

Runtime::Buffer<> Tuner::wrap(const Memory &m, Type type, int dims, const Problem &p,
                              const std::string &view) {
    if (dims == 1) {
        halide_dimension_t d{0, int(p.shape.c), 1, 0};
        return Runtime::Buffer<>(type, m.bytes.get(), 1, &d);
    }
    auto d = tensor_dims(p.shape, view);
    return Runtime::Buffer<>(type, m.bytes.get(), 4, d.data());
}

template<typename T>
void Tuner::to_device(Runtime::Buffer<T> &b) {
    const DeviceAPI api = o_.backend == "cuda" ? DeviceAPI::CUDA : DeviceAPI::OpenCL;
    b.set_device_dirty(false);  // the host copy is the one to send (outputs: just poisoned)
    b.set_host_dirty();
    if (b.copy_to_device(get_device_interface_for_device_api(api, target_)) != 0)
        throw std::runtime_error("copying an input to the device failed: " + g_jit_error);
}

Tuner::Outputs Tuner::make_outputs(const Compiled &compiled, const Problem &p) {
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

void Tuner::poison(Outputs &out) {
    for (size_t i = 0; i < out.buffers.size(); ++i) {
        std::memset(out.memory[i].bytes.get(), 0xff, out.memory[i].size);  // NaN everywhere
        if (gpu_) to_device(out.buffers[i]);
    }
}

// Calls c on p with `outputs`; throws with the kernel's message on failure.
void Tuner::call(const Compiled &compiled, const Problem &p, Outputs &outputs) {
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

Tuner::FloorData &Tuner::floor_data(const Problem &p, bool backward) {
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

void Tuner::run_floor(const Problem &p, bool backward) {
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
Callable &Tuner::gpu_copy(bool backward) {
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

Tuner::Outputs &Tuner::scratch(KernelRun &kr, const Compiled &c, size_t problem, size_t slot) {
    const Problem &p = kr.problems[problem];
    const std::string key =
        c.at(p.dtype).view + "/" + std::to_string(problem) + "/" + std::to_string(slot);
    auto it = kr.scratch.find(key);
    if (it == kr.scratch.end()) it = kr.scratch.emplace(key, make_outputs(c, p)).first;
    return it->second;
}

// Per-problem ratios time / floor of the compiled kernels, measured interleaved: each
// repetition times every kernel and the floor once, in a random order, and a kernel's ratio
// is the median over repetitions of its time / that repetition's floor. Pairing within a
// repetition cancels the memory bandwidth's drift on a shared machine (it moves by up to
// 1.7x within a run here); a sample lasts at least 5 ms.
std::vector<std::vector<double>> Tuner::measure(KernelRun &kr,
                                                const std::vector<const Compiled *> &cs, int reps) {
    std::vector<std::vector<double>> ratios(cs.size());
    std::mt19937 order_rng(uint32_t(o_.seed));
    for (size_t pi = 0; pi < kr.problems.size(); ++pi) {
        const Problem &p = kr.problems[pi];
        auto fails = [&](size_t i) { return cs[i]->at(p.dtype).failing.count(p.name()) > 0; };
        std::vector<Outputs *> outs;
        for (size_t i = 0; i < cs.size(); ++i) {
            outs.push_back(&scratch(kr, *cs[i], pi, i));
            if (!fails(i)) call(*cs[i], p, *outs.back());  // warm-up: pools, caches, first touch
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
                    times[i].push_back(time_call([&] { run_floor(p, kr.spec.backward); }, iters));
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

}  // namespace bn2d::tune
