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

// Training and eval forward, running statistics and backward with every output mask of one
// layout x dtype variant on `device`, against the float64 reference, for every shape.
inline void check_against_reference(const Variant &var, const std::vector<Shape> &shapes,
                                    Device device) {
    const Tolerance tol = tolerance(var.dtype);
    std::mt19937 rng(1234);
    const DType params = var.dtype == DType::float64 ? DType::float64 : DType::float32;
    for (const Shape &s : shapes) {
        for (bool affine : {true, false}) {
            SCOPED_TRACE(s.name() + (affine ? " affine" : " not affine"));
            Options o;
            o.affine = affine;
            o.dtype = params;
            BatchNorm2d bn(s.c, o);
            reference::Module ref = reference_like(bn);
            randomize_parameters(rng, bn, ref);
            bn.to(device);

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
                const std::vector<double> want = ref.forward(s, xv);
                const double y_atol = tol.arithmetic * (1.0 + max_abs(want)) * 4;
                EXPECT_TRUE(all_close(y.values(), want, y_atol, tol.rel_rounding,
                                      [&](int64_t i) { return "y " + where(s, i); }));
                EXPECT_EQ(y.written_outside(), 0);
                const StateDict st = bn.state_dict();
                const double stat_tol = var.dtype == DType::float64 ? 1e-12 : 2e-6;
                EXPECT_TRUE(all_close(st.running_mean, ref.running_mean, stat_tol, stat_tol));
                EXPECT_TRUE(all_close(st.running_var, ref.running_var, stat_tol, stat_tol));

                for (const BackwardMask &m : all_masks()) {
                    SCOPED_TRACE(mask_name(m));
                    dx.poison();
                    dev_dx.upload();
                    bn.zero_grad();
                    bn.backward(dev_dy.view(), m.input ? dev_dx.view() : Tensor(), m);
                    dev_dx.download();
                    const reference::Module::Grads g = ref.backward(s, xv, dyv);
                    if (m.input) {
                        const double atol = tol.arithmetic * (1.0 + max_abs(g.input)) * 4;
                        EXPECT_TRUE(all_close(dx.values(), g.input, atol, tol.rel_rounding,
                                              [&](int64_t i) { return "dx " + where(s, i); }));
                        EXPECT_EQ(dx.written_outside(), 0);
                    }
                    if (m.params && affine) {
                        const double atol = var.dtype == DType::float64
                                                ? 1e-11 * (1.0 + std::sqrt(double(s.per_channel())))
                                                : param_grad_atol(s);
                        EXPECT_TRUE(all_close(bn.state_dict().weight, st.weight, 0, 0));
                        // Read through the host: to() and back forgets the forward, so run
                        // it again (same x: same statistics, one more running-stats step).
                        bn.to(Device::CPU);
                        EXPECT_TRUE(all_close(to_vector_f64(bn.weight_grad()), g.weight, atol, 1e-6));
                        EXPECT_TRUE(all_close(to_vector_f64(bn.bias_grad()), g.bias, atol, 1e-6));
                        bn.to(device);
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
