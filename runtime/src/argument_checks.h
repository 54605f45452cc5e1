// Validation of a call's tensor arguments, shared by BatchNorm2d and bn2d::functional: every
// check throws bn2d::Error("<who>: <what is wrong>") before any kernel runs.
#pragma once

#include <cstdint>
#include <vector>

#include "bn2d/tensor.h"
#include "internal.h"

namespace bn2d::detail {

struct ArgumentChecks {
    const char *who;  // the message's prefix: "BatchNorm2d", "batch_norm", ...

    [[noreturn]] void fail(const std::string &msg) const;
    // A 4-D [N, C, H, W] tensor with C channels on `device`; `expect`: the exact shape it must
    // have (empty: any N, H, W).
    void tensor(const char *name, const Tensor &t, int64_t C, Device device,
                const std::vector<int64_t> &expect) const;
    // PyTorch's rule: an input of the parameters' dtype, or bfloat16/float16 with float32
    // parameters (mixed precision).
    void input_dtype(const char *name, const Tensor &t, DType params) const;
    void same_dtype(const char *name, const Tensor &t, const char *ref_name,
                    const Tensor &ref) const;
    // An output must not write two of its elements to one address (PyTorch's "more than one
    // element of the written-to tensor refers to a single memory location").
    void no_self_overlap(const char *name, const Tensor &t) const;
    // Outputs must not alias inputs: a channel group's statistics are read from x after other
    // groups may have written their outputs.
    void no_alias(const char *out_name, const Tensor &out, const char *in_name,
                  const Tensor &in) const;
};

// The layout of a call's tensors and whether all of them fuse their dense dimensions.
struct Placement {
    Layout layout;
    bool fuse;
};
Placement place(const std::vector<const Tensor *> &tensors);

}  // namespace bn2d::detail
