// The example network's parameters and its two implementations (see generators.cpp):
//   Network::fused()    one AOT Halide pipeline, batch norms as inlined stages;
//   Network::unfused()  separately compiled conv stages with the bn2d module between them.
#pragma once

#include <bn2d/bn2d.h>

#include <array>
#include <cassert>  // halide_image_io.h uses assert without including it (Halide 21)
#include <cmath>
#include <string>
#include <vector>

#include "HalideBuffer.h"
#include "conv3x3_relu_stage.h"
#include "conv3x3_u8_stage.h"
#include "conv_bn_relu_x2.h"
#include "halide_image_io.h"
#include "relu_to_u8.h"

namespace example {

using Halide::Runtime::Buffer;

constexpr int kMid = 8;  // channels of the hidden layer

inline void check(int rc, const char *what) {
    if (rc != 0)
        throw bn2d::Error(std::string(what) + " failed with Halide error " + std::to_string(rc));
}

// An RGB image from a PNG (or any format halide_image_io reads), planar (x, y, c).
inline Buffer<uint8_t, 3> load_rgb(const std::string &path) {
    Buffer<uint8_t, 3> image;
    if (!Halide::Tools::load(path, &image))
        throw std::runtime_error("cannot read an 8-bit image from " + path);
    if (image.channels() != 3) throw std::runtime_error(path + ": expected an RGB image");
    return image;
}

// An NCHW view (batch 1) of a planar (x, y, c) Halide buffer.
inline bn2d::Tensor nchw(Buffer<float, 3> &b) {
    return bn2d::Tensor::nchw(b.data(), 1, b.dim(2).extent(), b.dim(1).extent(), b.dim(0).extent());
}

inline Buffer<float, 1> vector_of(const std::vector<double> &v) {
    Buffer<float, 1> b(static_cast<int>(v.size()));
    for (size_t i = 0; i < v.size(); ++i) b(static_cast<int>(i)) = static_cast<float>(v[i]);
    return b;
}

struct Network {
    // Weights in (kx, ky, c_in, c_out): PyTorch's [C_out, C_in, 3, 3] memory.
    Buffer<float, 4> w1{3, 3, 3, kMid}, w2{3, 3, kMid, 3};
    Buffer<float, 1> b1{kMid}, b2{3};
    bn2d::BatchNorm2d bn1{kMid, 1e-5, std::nullopt}, bn2{3, 1e-5, std::nullopt};
    // Intermediates of the unfused path.
    Buffer<float, 3> conv1, norm1, conv2, norm2;

    // Hand-made filters that look like a first layer's: luminance, Sobel x and y, a
    // Laplacian, two colour-opponent channels, a blur and an inverted luminance; the second
    // layer mixes them back into RGB.
    Network() {
        const float lum[3] = {0.299f, 0.587f, 0.114f};
        const float sobel_x[3][3] = {{-1, 0, 1}, {-2, 0, 2}, {-1, 0, 1}};
        const float laplace[3][3] = {{0, -1, 0}, {-1, 4, -1}, {0, -1, 0}};
        w1.fill(0.0f);
        w2.fill(0.0f);
        b1.fill(0.0f);
        b2.fill(0.0f);
        for (int c = 0; c < 3; ++c) {
            w1(1, 1, c, 0) = lum[c];
            w1(1, 1, c, 7) = -lum[c];
            for (int ky = 0; ky < 3; ++ky)
                for (int kx = 0; kx < 3; ++kx) {
                    w1(kx, ky, c, 1) = sobel_x[ky][kx] * lum[c];
                    w1(kx, ky, c, 2) = sobel_x[kx][ky] * lum[c];
                    w1(kx, ky, c, 3) = laplace[ky][kx] * lum[c];
                    w1(kx, ky, c, 6) = lum[c] / 9.0f;
                }
        }
        w1(1, 1, 0, 4) = 1.0f;  // red - green
        w1(1, 1, 1, 4) = -1.0f;
        w1(1, 1, 2, 5) = 1.0f;  // blue - yellow
        w1(1, 1, 0, 5) = -0.5f;
        w1(1, 1, 1, 5) = -0.5f;
        // Output channel o: the blurred luminance, the edges, and its colour channel's opponent.
        const float mix[3][kMid] = {{0.4f, 0.25f, 0.25f, 0.3f, 0.6f, -0.2f, 0.5f, -0.2f},
                                    {0.5f, 0.25f, 0.25f, 0.3f, -0.4f, -0.2f, 0.5f, -0.2f},
                                    {0.4f, 0.25f, 0.25f, 0.3f, -0.1f, 0.7f, 0.5f, -0.2f}};
        for (int o = 0; o < 3; ++o)
            for (int i = 0; i < kMid; ++i) w2(1, 1, i, o) = mix[o][i];
        bn1.eval();
        bn2.eval();
    }

    void allocate(int width, int height) {
        conv1 = Buffer<float, 3>(width, height, kMid);
        norm1 = Buffer<float, 3>(width, height, kMid);
        conv2 = Buffer<float, 3>(width, height, 3);
        norm2 = Buffer<float, 3>(width, height, 3);
    }

    // Running statistics from the image itself, as a model's would come from its training
    // data: each module in training mode with momentum None (a cumulative average: after one
    // batch, the batch's statistics), then eval mode. The output's batch norm gets weight 0.2
    // and bias 0.5, a mid-grey image with a visible spread.
    void calibrate(Buffer<uint8_t, 3> &image) {
        allocate(image.width(), image.height());
        bn1.train();
        bn2.train();
        unfused(image, nullptr);
        bn2d::StateDict s = bn2.state_dict();
        s.weight.assign(3, 0.2);
        s.bias.assign(3, 0.5);
        bn2.load_state_dict(s);
        bn1.eval();
        bn2.eval();
    }

    // conv1 -> bn1 (module) -> [ReLU +] conv2 -> bn2 (module) -> ReLU and 8 bits: five passes.
    void unfused(Buffer<uint8_t, 3> &image, Buffer<uint8_t, 3> *out) {
        check(conv3x3_u8_stage(image, w1, b1, conv1), "conv1");
        bn1.forward(nchw(conv1), nchw(norm1));
        check(conv3x3_relu_stage(norm1, w2, b2, conv2), "conv2");
        bn2.forward(nchw(conv2), nchw(norm2));
        if (out) check(relu_to_u8(norm2, *out), "relu_to_u8");
    }

    // The same network as one pipeline, with the modules' parameters and running statistics.
    void fused(Buffer<uint8_t, 3> &image, Buffer<uint8_t, 3> &out) {
        const bn2d::StateDict s1 = bn1.state_dict(), s2 = bn2.state_dict();
        fused_params = {vector_of(s1.weight),       vector_of(s1.bias),
                        vector_of(s1.running_mean), vector_of(s1.running_var),
                        vector_of(s2.weight),       vector_of(s2.bias),
                        vector_of(s2.running_mean), vector_of(s2.running_var)};
        run_fused(image, out);
    }
    // Only the pipeline (parameters from the last fused()).
    void run_fused(Buffer<uint8_t, 3> &image, Buffer<uint8_t, 3> &out) {
        auto &p = fused_params;
        check(conv_bn_relu_x2(image, w1, b1, p[0], p[1], p[2], p[3], w2, b2, p[4], p[5], p[6], p[7],
                              bn1.eps(), out),
              "conv_bn_relu_x2");
    }
    std::array<Buffer<float, 1>, 8> fused_params;
};

}  // namespace example
