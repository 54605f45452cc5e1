// Checkpoints: a module's state as a safetensors file (https://github.com/huggingface/safetensors),
// the format PyTorch models are shipped in, with PyTorch's key names.
//
// Keys are `<prefix>weight`, `<prefix>bias`, `<prefix>running_mean`, `<prefix>running_var` and
// `<prefix>num_batches_tracked`, present as in the module's state_dict() (no weight/bias when not
// affine, no running statistics when not tracked). The prefix picks one BatchNorm2d out of a
// whole model's checkpoint: "layer1.0.bn1." for model.layer1[0].bn1.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bn2d/batchnorm2d.h"

namespace bn2d {

// Writes the module's state: per-channel values in the module's dtype (F32, F64, BF16, F16, as
// torch's state_dict() holds them) and num_batches_tracked as a 0-dim I64 tensor. Atomic: the
// file is written to a temporary file in the same directory, flushed to disk and renamed over
// `path`, so a crash leaves either the old file or the new one, never half of one.
void save_safetensors(const BatchNorm2d &module, const std::string &path,
                      const std::string &prefix = "");

// Loads the module's state from a file written by us, by Python's safetensors package or by any
// other writer. Per-channel tensors may be F64, F32, BF16 or F16 (converted as PyTorch's
// load_state_dict copies them: rounded to the module's dtype); num_batches_tracked any integer
// type. All or nothing: on any error (missing key, wrong shape or dtype, a corrupt or truncated
// file, unreadable path) a bn2d::Error names the file and the key, and the module is unchanged.
// strict (PyTorch's default): keys under `prefix` that the module does not have are an error.
// A missing num_batches_tracked is not an error (checkpoints from before PyTorch 0.4.1 lack
// it): it loads as 0, as libtorch does.
void load_safetensors(BatchNorm2d &module, const std::string &path, const std::string &prefix = "",
                      bool strict = true);

// One tensor of a safetensors file, as stored (little-endian bytes).
struct SafetensorsEntry {
    std::string name;
    std::string dtype;  // "F32", "BF16", "I64", ...
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// The header of a safetensors file, validated: every entry's shape and dtype agree with its byte
// range, and the ranges lie inside the file. Throws bn2d::Error on a corrupt or truncated file.
std::vector<SafetensorsEntry> read_safetensors_header(const std::string &path);

}  // namespace bn2d
