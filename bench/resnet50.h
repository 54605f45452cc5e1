// The batch-norm layers of a real network: torchvision's ResNet-50 (v1.5, the stride on each
// stage's first 3x3 convolution) at batch 32, 53 layers in 16 kinds. A kind is a shape and
// what follows the batch norm: a ReLU (stem, the first two of each bottleneck), the residual's
// add + ReLU (each bottleneck's last), or nothing (the downsample branch, whose output is the
// residual). tools/resnet50_report.py weighs each kind's time by its count: the batch-norm time
// of one training step (forward + backward) and of one inference pass.
#pragma once

#include <cstdint>
#include <vector>

#include "problems.h"

namespace bn2d::bench {

enum class LayerTail { none, relu, add_relu };

inline const char *tail_name(LayerTail t) {
    return t == LayerTail::relu ? "relu" : t == LayerTail::add_relu ? "add_relu" : "none";
}

struct Layer {
    problems::Shape shape;
    int count;  // layers of this kind in the network
    LayerTail tail;
};

inline const std::vector<Layer> &resnet50_layers() {
    using T = LayerTail;
    static const std::vector<Layer> layers = {
        {{32, 64, 112, 112}, 1, T::relu},      // stem
        {{32, 64, 56, 56}, 6, T::relu},        // stage 1: 3 bottlenecks
        {{32, 256, 56, 56}, 3, T::add_relu},   //
        {{32, 256, 56, 56}, 1, T::none},       //   downsample
        {{32, 128, 56, 56}, 1, T::relu},       // stage 2: 4 bottlenecks, the first's 1x1 at 56x56
        {{32, 128, 28, 28}, 7, T::relu},       //
        {{32, 512, 28, 28}, 4, T::add_relu},   //
        {{32, 512, 28, 28}, 1, T::none},       //
        {{32, 256, 28, 28}, 1, T::relu},       // stage 3: 6 bottlenecks
        {{32, 256, 14, 14}, 11, T::relu},      //
        {{32, 1024, 14, 14}, 6, T::add_relu},  //
        {{32, 1024, 14, 14}, 1, T::none},      //
        {{32, 512, 14, 14}, 1, T::relu},       // stage 4: 3 bottlenecks
        {{32, 512, 7, 7}, 5, T::relu},         //
        {{32, 2048, 7, 7}, 3, T::add_relu},    //
        {{32, 2048, 7, 7}, 1, T::none},        //
    };
    return layers;
}

}  // namespace bn2d::bench
