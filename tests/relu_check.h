// The fused batchnorm + ReLU and batchnorm + add + ReLU check shared by the CPU tests
// (relu_test.cpp) and the GPU tests (gpu_test.cpp): one layout x dtype variant, every
// combination of activation and residual, training and eval, every backward output mask, on
// any device, against the float64 reference.
#pragma once

#include "layout_dtype_check.h"

namespace bn2d::test {

// Shapes that reach every schedule path at test sizes: odd extents, 7x7 planes (NHWC kernels
// from 16 channels), few channels (parallel inside a channel), and planes of several vectors.
inline std::vector<Shape> fused_shapes() {
    return {Shape{2, 7, 5, 9}, Shape{4, 16, 7, 7}, Shape{3, 3, 17, 33}, Shape{2, 24, 30, 40}};
}

struct Fusion {
    bool relu, residual;
    std::string name() const {
        return std::string(residual ? "add" : "") + (residual && relu ? "_" : "") +
               (relu ? "relu" : "");
    }
};
inline std::vector<Fusion> all_fusions() { return {{true, false}, {false, true}, {true, true}}; }

// The reference epilogue on the float64 batch norm output: relu(pre + z) (z empty: none).
inline std::vector<double> reference_epilogue(std::vector<double> pre, const std::vector<double> &z,
                                              bool relu) {
    for (size_t i = 0; i < pre.size(); ++i) {
        if (!z.empty()) pre[i] += z[i];
        if (relu && pre[i] <= 0) pre[i] = 0;
    }
    return pre;
}

// PyTorch's threshold_backward(dy, y, 0): dy where y > 0 or y is NaN, else 0.
inline std::vector<double> through_relu(const std::vector<double> &dy,
                                        const std::vector<double> &y) {
    std::vector<double> g(dy.size());
    for (size_t i = 0; i < dy.size(); ++i) g[i] = y[i] <= 0 ? 0.0 : dy[i];
    return g;
}

inline void check_fused_against_reference(const Variant &var, const std::vector<Shape> &shapes,
                                          Device device) {
    const Tolerance tol = tolerance(var.dtype);
    std::mt19937 rng(4321);
    for (const Shape &s : shapes) {
        for (const Fusion &f : all_fusions()) {
            SCOPED_TRACE(s.name() + " " + f.name());
            Options o;
            o.activation = f.relu ? Activation::relu : Activation::none;
            ModuleAndReference m(var, s, o, rng, device);
            BatchNorm2d &bn = m.bn;
            reference::Module &ref = m.ref;

            TypedTensor x(var.dtype, s, var.x_layout), z(var.dtype, s, var.x_layout);
            TypedTensor y(var.dtype, s, var.y_layout), dy(var.dtype, s, var.y_layout);
            TypedTensor dx(var.dtype, s, var.y_layout), dz(var.dtype, s, var.y_layout);
            const std::vector<double> xv = x.randomize(rng, 3.0, 2.0);
            const std::vector<double> zv = f.residual ? z.randomize(rng) : std::vector<double>();
            const std::vector<double> dyv = dy.randomize(rng);
            OnDevice dev_x(x, device), dev_z(z, device), dev_y(y, device), dev_dy(dy, device),
                dev_dx(dx, device), dev_dz(dz, device);
            auto forward = [&] {
                if (f.residual)
                    bn.forward_add(dev_x.view(), dev_z.view(), dev_y.view());
                else
                    bn.forward(dev_x.view(), dev_y.view());
            };

            for (bool training : {true, false}) {
                SCOPED_TRACE(training ? "training" : "eval");
                bn.train(training);
                ref.training = training;
                y.poison();
                dev_y.upload();
                forward();
                dev_y.download();
                expect_output_close(y, reference_epilogue(ref.forward(s, xv), zv, f.relu), tol, s,
                                    "y");
                expect_running_stats(bn.state_dict(), ref, var.dtype);

                // The gradient reaching the batch norm: through the ReLU of the output as the
                // module wrote it (PyTorch masks by the result), itself checked above.
                const std::vector<double> incoming = f.relu ? through_relu(dyv, y.values()) : dyv;
                std::vector<BackwardMask> masks = all_masks();
                if (f.residual) masks.push_back(BackwardMask{false, false});  // dz alone
                for (const BackwardMask &mask : masks) {
                    SCOPED_TRACE(mask_name(mask));
                    dx.poison();
                    dz.poison();
                    dev_dx.upload();
                    dev_dz.upload();
                    bn.zero_grad();
                    const Tensor grad_input = mask.input ? dev_dx.view() : Tensor();
                    if (f.residual)
                        bn.backward_add(dev_dy.view(), grad_input, dev_dz.view(), mask);
                    else
                        bn.backward(dev_dy.view(), grad_input, mask);
                    dev_dx.download();
                    dev_dz.download();
                    if (f.residual) {  // exactly dy or 0: no arithmetic
                        EXPECT_TRUE(all_close(dz.values(), incoming, 0, 0,
                                              [&](int64_t i) { return "dz " + where(s, i); }));
                        EXPECT_EQ(dz.written_outside(), 0);
                    }
                    const reference::Module::Grads g = ref.backward(s, xv, incoming);
                    if (mask.input) expect_output_close(dx, g.input, tol, s, "dx");
                    if (mask.params) {
                        expect_param_grads(bn, g, var.dtype, s, device);
                        forward();
                        ref.forward(s, xv);
                    }
                }
            }
        }
    }
}

}  // namespace bn2d::test
