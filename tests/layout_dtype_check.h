// The layout x dtype check shared by the CPU tests (layouts_dtypes_test.cpp) and the GPU tests
// (gpu_test.cpp): one variant against the float64 reference on any device.
#pragma once

#include <cmath>
#include <optional>

#include "common.h"
#include "typed_tensor.h"

namespace bn2d::test {

// A TypedTensor where the module runs: itself on the CPU, a copy on a device.
class OnDevice {
public:
    OnDevice(TypedTensor &t, Device d) : t_(t), device_(d) {
        if (d != Device::CPU) {
            buf_.emplace(t.device_buffer(d));
            upload();
        }
    }
    Tensor view() { return buf_ ? t_.device_view(*buf_) : t_.view(); }
    void upload() {
        if (buf_) t_.upload(*buf_);
    }
    void download() {
        if (buf_) t_.download(*buf_);
    }

private:
    TypedTensor &t_;
    Device device_;
    std::optional<DeviceBuffer> buf_;
};

struct Variant {
    std::string x_layout, y_layout;  // y_layout: y, dy and dx (differs: the mixed case)
    DType dtype;
    std::string name() const {
        const std::string l = x_layout == y_layout ? x_layout : x_layout + "_to_" + y_layout;
        return l + "_" + dtype_short_name(dtype);
    }
};

inline void PrintTo(const Variant &v, std::ostream *os) { *os << v.name(); }

// Tolerances per dtype. Outputs are rounded once to the dtype: half an ulp relative (2^-9
// bfloat16, 2^-12 float16) on top of the float32 arithmetic's few ulps of the largest term.
// float64 is float64 arithmetic end to end.
struct Tolerance {
    double rel_rounding;  // relative error of storing one output element
    double arithmetic;    // relative error of the compute type's arithmetic
};
Tolerance tolerance(DType t) {
    switch (t) {
    case DType::bfloat16: return {std::ldexp(1.0, -8), 4e-6};
    case DType::float16: return {std::ldexp(1.0, -11), 4e-6};
    case DType::float64: return {0.0, 1e-12};
    default: return {0.0, 4e-6};
    }
}

double max_abs(const std::vector<double> &v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::abs(x));
    return m;
}

// The CPU variants: every layout of typed_tensor.h, and x and y in different layouts.
inline std::vector<Variant> all_variants() {
    std::vector<Variant> v;
    for (DType t : {DType::float32, DType::bfloat16, DType::float16, DType::float64}) {
        for (const char *l : {"nchw", "nhwc", "padded", "reversed"}) v.push_back({l, l, t});
        v.push_back({"nchw", "nhwc", t});  // mixed layouts: the strided kernels
    }
    return v;
}

// A module of the variant's parameter dtype with random parameters, on `device`, and the
// float64 reference with the same ones.
struct ModuleAndReference {
    BatchNorm2d bn;
    reference::Module ref;
    ModuleAndReference(const Variant &var, const Shape &s, Options o, std::mt19937 &rng,
                       Device device)
        : bn(s.c, with_params_dtype(o, var)), ref(reference_like(bn)) {
        randomize_parameters(rng, bn, ref);
        bn.to(device);
    }
    static Options with_params_dtype(Options o, const Variant &var) {
        o.dtype = var.dtype == DType::float64 ? DType::float64 : DType::float32;
        return o;
    }
};

// A 4-D output against the reference: within the dtype's tolerance, written everywhere inside
// its view and nowhere outside it.
inline void expect_output_close(const TypedTensor &got, const std::vector<double> &want,
                                const Tolerance &tol, const Shape &s, const std::string &what) {
    const double atol = tol.arithmetic * (1.0 + max_abs(want)) * 4;
    EXPECT_TRUE(all_close(got.values(), want, atol, tol.rel_rounding,
                          [&](int64_t i) { return what + " " + where(s, i); }));
    EXPECT_EQ(got.written_outside(), 0) << what;
}

inline void expect_running_stats(const StateDict &st, const reference::Module &ref, DType dtype) {
    const double stat_tol = dtype == DType::float64 ? 1e-12 : 2e-6;
    EXPECT_TRUE(all_close(st.running_mean, ref.running_mean, stat_tol, stat_tol));
    EXPECT_TRUE(all_close(st.running_var, ref.running_var, stat_tol, stat_tol));
}

// The parameter gradients against the reference's, read through the host: to() forgets the
// forward, so the caller runs it again afterwards (same inputs: same output, one more
// running-statistics step in training, in the module and the reference alike).
inline void expect_param_grads(BatchNorm2d &bn, const reference::Module::Grads &g, DType dtype,
                               const Shape &s, Device device) {
    const double atol = dtype == DType::float64 ? 1e-11 * (1.0 + std::sqrt(double(s.per_channel())))
                                                : param_grad_atol(s);
    bn.to(Device::CPU);
    EXPECT_TRUE(all_close(to_vector_f64(bn.weight_grad()), g.weight, atol, 1e-6));
    EXPECT_TRUE(all_close(to_vector_f64(bn.bias_grad()), g.bias, atol, 1e-6));
    bn.to(device);
}

// Training and eval forward, running statistics and backward with every output mask of one
// layout x dtype variant on `device`, against the float64 reference, for every shape.
inline void check_against_reference(const Variant &var, const std::vector<Shape> &shapes,
                                    Device device) {
    const Tolerance tol = tolerance(var.dtype);
    std::mt19937 rng(1234);
    for (const Shape &s : shapes) {
        for (bool affine : {true, false}) {
            SCOPED_TRACE(s.name() + (affine ? " affine" : " not affine"));
            Options o;
            o.affine = affine;
            ModuleAndReference m(var, s, o, rng, device);
            BatchNorm2d &bn = m.bn;
            reference::Module &ref = m.ref;

            TypedTensor x(var.dtype, s, var.x_layout), y(var.dtype, s, var.y_layout);
            TypedTensor dy(var.dtype, s, var.y_layout), dx(var.dtype, s, var.y_layout);
            // A mean far from zero: the statistics must not cancel.
            const std::vector<double> xv = x.randomize(rng, 3.0, 2.0);
            const std::vector<double> dyv = dy.randomize(rng);
            OnDevice dev_x(x, device), dev_y(y, device), dev_dy(dy, device), dev_dx(dx, device);

            for (bool training : {true, false}) {
                SCOPED_TRACE(training ? "training" : "eval");
                bn.train(training);
                ref.training = training;
                y.poison();
                dev_y.upload();
                bn.forward(dev_x.view(), dev_y.view());
                dev_y.download();
                expect_output_close(y, ref.forward(s, xv), tol, s, "y");
                const StateDict st = bn.state_dict();
                expect_running_stats(st, ref, var.dtype);

                for (const BackwardMask &mask : all_masks()) {
                    SCOPED_TRACE(mask_name(mask));
                    dx.poison();
                    dev_dx.upload();
                    bn.zero_grad();
                    bn.backward(dev_dy.view(), mask.input ? dev_dx.view() : Tensor(), mask);
                    dev_dx.download();
                    const reference::Module::Grads g = ref.backward(s, xv, dyv);
                    if (mask.input) expect_output_close(dx, g.input, tol, s, "dx");
                    if (mask.params && affine) {
                        EXPECT_TRUE(all_close(bn.state_dict().weight, st.weight, 0, 0));
                        expect_param_grads(bn, g, var.dtype, s, device);
                        if (device != Device::CPU) {
                            bn.forward(dev_x.view(), dev_y.view());
                            ref.forward(s, xv);
                        }
                    }
                }
            }
        }
    }
}

}  // namespace bn2d::test
