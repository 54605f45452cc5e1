// float32 host vectors to and from libtorch tensors, for the libtorch parity tests.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "bn2d/bn2d.h"
#include "problems.h"

namespace bn2d::test {

inline torch::Tensor to_torch(const std::vector<float> &v, const problems::Shape &s) {
    return torch::from_blob(const_cast<float *>(v.data()), {s.n, s.c, s.h, s.w}).clone();
}
inline std::vector<float> from_torch(const torch::Tensor &t) {
    torch::Tensor c = t.detach().contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// The same weight and bias in libtorch's module and ours.
inline void set_parameters(torch::nn::BatchNorm2d &theirs, BatchNorm2d &ours, std::vector<float> w,
                           std::vector<float> b) {
    torch::NoGradGuard ng;
    const int64_t C = static_cast<int64_t>(w.size());
    theirs->weight.copy_(torch::from_blob(w.data(), {C}));
    theirs->bias.copy_(torch::from_blob(b.data(), {C}));
    StateDict d = ours.state_dict();
    d.weight.assign(w.begin(), w.end());
    d.bias.assign(b.begin(), b.end());
    ours.load_state_dict(d);
}

}  // namespace bn2d::test
