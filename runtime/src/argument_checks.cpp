// Argument validation shared by BatchNorm2d and bn2d::functional (argument_checks.h).
#include "argument_checks.h"

namespace bn2d::detail {

void ArgumentChecks::fail(const std::string &msg) const {
    throw Error(std::string(who) + ": " + msg);
}

void ArgumentChecks::tensor(const char *name, const Tensor &t, int64_t C, Device device,
                            const std::vector<int64_t> &expect) const {
    // Null data is fine only for an empty tensor (PyTorch accepts empty batches).
    if (!t.defined() && (t.dim() != 4 || t.numel() > 0))
        fail(std::string(name) + " is null (no data pointer)");
    if (t.dim() != 4)
        fail(std::string(name) + " must be 4-D (N, C, H, W), got " + std::to_string(t.dim()) +
             "-D " + t.shape_string());
    for (int i = 0; i < 4; ++i)
        if (t.size(i) < 0) fail(std::string(name) + " has a negative size " + t.shape_string());
    try {
        element_span(t);  // the element count and every reach fit int64
    } catch (const Error &e) {
        fail(std::string(name) + ": " + e.what());
    }

    if (!expect.empty() && t.sizes() != expect) {
        Tensor e(nullptr, expect);
        fail(std::string(name) + " has shape " + t.shape_string() + ", expected " +
             e.shape_string());
    }
    if (t.size(1) != C)
        fail(std::string(name) + ": expected " + std::to_string(C) +
             " channels (num_features), got C = " + std::to_string(t.size(1)) + " in " +
             t.shape_string());
    if (t.device() != device)
        fail(std::string(name) + " is on " + device_name(t.device()) + " but the module is on " +
             device_name(device) + " (use to())");
    if (t.device() == Device::OpenCL)
        for (int i = 0; i < 4; ++i)
            if (t.size(i) > 1 && t.stride(i) < 0)
                fail(std::string(name) + ": negative strides are not supported on opencl");
}

void ArgumentChecks::input_dtype(const char *name, const Tensor &t, DType params) const {
    const DType d = t.dtype();
    const bool mixed = params == DType::float32 && (d == DType::bfloat16 || d == DType::float16);
    if (d != params && !mixed)
        fail(std::string(name) + " is " + dtype_name(d) + " but the parameters are " +
             dtype_name(params) + " (inputs must have the parameters' dtype, or be bfloat16 or " +
             "float16 with float32 parameters)");
}

void ArgumentChecks::same_dtype(const char *name, const Tensor &t, const char *ref_name,
                                const Tensor &ref) const {
    if (t.dtype() != ref.dtype())
        fail(std::string(name) + " is " + dtype_name(t.dtype()) + " but " + ref_name + " is " +
             dtype_name(ref.dtype()));
}

void ArgumentChecks::no_self_overlap(const char *name, const Tensor &t) const {
    if (self_overlaps(t))
        fail(std::string(name) + " has overlapping elements (strides " +
             Tensor(nullptr, t.strides()).shape_string() + " for shape " + t.shape_string() +
             "); an output must not overlap itself");
}

void ArgumentChecks::no_alias(const char *out_name, const Tensor &out, const char *in_name,
                              const Tensor &in) const {
    if (overlaps(out, in))
        fail(std::string(out_name) + " overlaps " + in_name +
             " in memory; in-place operation is not supported");
}

Placement place(const std::vector<const Tensor *> &tensors) {
    Placement p{common_layout(tensors), true};
    for (const Tensor *t : tensors) p.fuse = p.fuse && fusable(*t, p.layout);
    return p;
}

}  // namespace bn2d::detail
