// bn2d._bn2d: the Python extension over bn2d::functional and the library's settings.
//
// Tensors cross as plain descriptors, (data_ptr, dtype code, sizes, strides), that
// python/bn2d/torch.py reads off torch tensors: the extension links no torch, so one build
// serves every torch version whose tensors expose those (no C++ ABI coupling).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "bn2d/bn2d.h"

namespace py = pybind11;

namespace {

// The dtype codes of python/bn2d/torch.py's descriptors.
constexpr bn2d::DType kDtypes[] = {bn2d::DType::float32, bn2d::DType::bfloat16,
                                   bn2d::DType::float16, bn2d::DType::float64};

std::vector<int64_t> int64s(PyObject *tuple, const char *what) {
    if (!PyTuple_Check(tuple))
        throw bn2d::Error(std::string("tensor descriptor: ") + what + " must be a tuple");
    std::vector<int64_t> v(static_cast<size_t>(PyTuple_GET_SIZE(tuple)));
    for (size_t i = 0; i < v.size(); ++i) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, i));
        if (v[i] == -1 && PyErr_Occurred()) throw py::error_already_set();
    }
    return v;
}

// A descriptor (data_ptr, dtype code, sizes, strides), or None for a tensor left out. Parsed
// with the C API: this is most of the per-call cost of a tiny tensor.
bn2d::Tensor tensor(py::handle descriptor) {
    if (descriptor.is_none()) return {};
    PyObject *d = descriptor.ptr();
    if (!PyTuple_Check(d) || PyTuple_GET_SIZE(d) != 4)
        throw bn2d::Error("tensor descriptor: expected (data_ptr, dtype, sizes, strides)");
    const unsigned long long ptr = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(d, 0));
    const long code = PyLong_AsLong(PyTuple_GET_ITEM(d, 1));
    if (PyErr_Occurred()) throw py::error_already_set();
    if (code < 0 || code >= static_cast<long>(std::size(kDtypes)))
        throw bn2d::Error("tensor descriptor: unknown dtype code " + std::to_string(code));
    return bn2d::Tensor(reinterpret_cast<void *>(static_cast<uintptr_t>(ptr)), kDtypes[code],
                        int64s(PyTuple_GET_ITEM(d, 2), "sizes"),
                        int64s(PyTuple_GET_ITEM(d, 3), "strides"));
}

bn2d::Activation activation(bool relu) {
    return relu ? bn2d::Activation::relu : bn2d::Activation::none;
}

bn2d::CpuStrategy strategy_from_name(const std::string &name) {
    if (name == "automatic") return bn2d::CpuStrategy::automatic;
    if (name == "fused") return bn2d::CpuStrategy::fused;
    if (name == "split") return bn2d::CpuStrategy::split;
    throw bn2d::Error("unknown CPU strategy '" + name + "' (automatic, fused, split)");
}

const char *strategy_name(bn2d::CpuStrategy s) {
    switch (s) {
    case bn2d::CpuStrategy::automatic: return "automatic";
    case bn2d::CpuStrategy::fused: return "fused";
    case bn2d::CpuStrategy::split: return "split";
    }
    return "unknown";
}

}  // namespace

PYBIND11_MODULE(_bn2d, m) {
    m.doc() = "bn2d's AOT Halide batch-norm kernels (use bn2d.torch for PyTorch modules)";
    static py::exception<bn2d::Error> error(m, "Error", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const bn2d::Error &e) {
            error(e.what());
        }
    });

    // Kernels run without the GIL: other Python threads (a DataLoader's, a second model's) go on.
    m.def(
        "batch_norm",
        [](py::handle input, py::handle residual, py::handle weight, py::handle bias,
           py::handle running_mean, py::handle running_var, bool training, double momentum,
           double eps, bool relu, py::handle out, py::handle save_mean, py::handle save_invstd) {
            bn2d::functional::ForwardArgs a{tensor(input),
                                            tensor(residual),
                                            tensor(weight),
                                            tensor(bias),
                                            tensor(running_mean),
                                            tensor(running_var),
                                            training,
                                            momentum,
                                            eps,
                                            activation(relu),
                                            tensor(out),
                                            tensor(save_mean),
                                            tensor(save_invstd)};
            py::gil_scoped_release unlocked;
            bn2d::functional::batch_norm(a);
        },
        py::arg("input"), py::arg("residual"), py::arg("weight"), py::arg("bias"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("training"), py::arg("momentum"),
        py::arg("eps"), py::arg("relu"), py::arg("out"), py::arg("save_mean"),
        py::arg("save_invstd"));
    m.def(
        "batch_norm_backward",
        [](py::handle grad_out, py::handle input, py::handle output, py::handle weight,
           py::handle running_mean, py::handle running_var, py::handle save_mean,
           py::handle save_invstd, bool training, double eps, bool relu, py::handle grad_input,
           py::handle grad_weight, py::handle grad_bias, py::handle grad_residual) {
            bn2d::functional::BackwardArgs a{tensor(grad_out),
                                             tensor(input),
                                             tensor(output),
                                             tensor(weight),
                                             tensor(running_mean),
                                             tensor(running_var),
                                             tensor(save_mean),
                                             tensor(save_invstd),
                                             training,
                                             eps,
                                             activation(relu),
                                             tensor(grad_input),
                                             tensor(grad_weight),
                                             tensor(grad_bias),
                                             tensor(grad_residual)};
            py::gil_scoped_release unlocked;
            bn2d::functional::batch_norm_backward(a);
        },
        py::arg("grad_out"), py::arg("input"), py::arg("output"), py::arg("weight"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("training"), py::arg("eps"), py::arg("relu"),
        py::arg("grad_input"), py::arg("grad_weight"), py::arg("grad_bias"),
        py::arg("grad_residual"));

    // ---- SyncBatchNorm's steps (bn2d/functional.h) ----
    m.def("batch_norm_stats", [](py::handle input, py::handle partial) {
        const bn2d::Tensor x = tensor(input), p = tensor(partial);
        py::gil_scoped_release unlocked;
        bn2d::functional::batch_norm_stats(x, p);
    });
    m.def("batch_norm_gather_stats",
          [](py::handle gathered, py::handle running_mean, py::handle running_var, double momentum,
             double eps, py::handle save_mean, py::handle save_invstd, py::handle var) {
              bn2d::functional::GatherStatsArgs a{
                  tensor(gathered),  tensor(running_mean), tensor(running_var), momentum, eps,
                  tensor(save_mean), tensor(save_invstd),  tensor(var)};
              py::gil_scoped_release unlocked;
              bn2d::functional::batch_norm_gather_stats(a);
          });
    // grad_input null: backward_reduce (grad_weight, grad_bias, sums); else backward_elemt.
    m.def("batch_norm_sync_backward",
          [](py::handle grad_out, py::handle input, py::handle weight, py::handle save_mean,
             py::handle save_invstd, double eps, py::handle grad_input, py::handle grad_weight,
             py::handle grad_bias, py::handle sums, int64_t count) {
              bn2d::functional::BackwardArgs a;
              a.grad_out = tensor(grad_out);
              a.input = tensor(input);
              a.weight = tensor(weight);
              a.save_mean = tensor(save_mean);
              a.save_invstd = tensor(save_invstd);
              a.eps = eps;
              a.grad_input = tensor(grad_input);
              a.grad_weight = tensor(grad_weight);
              a.grad_bias = tensor(grad_bias);
              const bn2d::Tensor s = tensor(sums);
              py::gil_scoped_release unlocked;
              if (a.grad_input.defined() || a.grad_input.dim() > 0)
                  bn2d::functional::batch_norm_backward_elemt(a, s, count);
              else
                  bn2d::functional::batch_norm_backward_reduce(a, s);
          });

    // ---- settings (bn2d/settings.h) ----
    m.def("set_max_cpu_isa",
          [](const std::string &name) { bn2d::set_max_cpu_isa(bn2d::isa_from_name(name)); });
    m.def("max_cpu_isa", [] { return std::string(bn2d::isa_name(bn2d::max_cpu_isa())); });
    m.def("last_cpu_isa_used",
          [] { return std::string(bn2d::isa_name(bn2d::last_cpu_isa_used())); });
    m.def("compiled_cpu_isas", [] {
        std::vector<std::string> names;
        for (bn2d::CpuIsa isa : bn2d::compiled_cpu_isas()) names.emplace_back(bn2d::isa_name(isa));
        return names;
    });
    m.def("set_num_threads", &bn2d::set_num_threads);
    m.def("num_threads", &bn2d::num_threads);
    m.def("set_cpu_strategy",
          [](const std::string &name) { bn2d::set_cpu_strategy(strategy_from_name(name)); });
    m.def("cpu_strategy", [] { return std::string(strategy_name(bn2d::cpu_strategy())); });
    m.def("set_verbose", &bn2d::set_verbose);
    m.def("build_info", [] {
        const bn2d::BuildInfo &b = bn2d::build_info();
        py::dict d;
        d["halide_version"] = b.halide_version;
        d["schedule_machine"] = b.schedule_machine;
        d["cpu_targets"] = b.cpu_targets;
        d["cpu_isa_best"] = b.cpu_isa_best;
        d["cuda_target"] = b.cuda_target;
        d["opencl_target"] = b.opencl_target;
        d["kernels"] = b.kernels;
        return d;
    });
}
