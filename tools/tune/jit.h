// Kernels JIT-compiled in this process from the Generators linked into the tuner (Tuner::compile,
// in jit.cpp), and the errors they and Halide report.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "Halide.h"

namespace bn2d::tune {

extern std::string g_jit_error;  // the last message from a JIT-compiled kernel
void jit_error(Halide::JITUserContext *, const char *msg);

// The message of the exception in flight: Halide's compile errors (Halide::Error, not a
// std::exception) and everything else.
std::string current_error();

// A kernel JIT-compiled for one dtype, and its arguments in call order.
struct Kernel {
    Halide::Callable callable;
    std::vector<Halide::Internal::AbstractGenerator::ArgInfo> args;
    std::string view;  // how its 4-D buffers are presented (tensor_dims)
    // Problems it fails (an autoscheduled kernel whose tiles outgrow a small input): skipped.
    std::set<std::string> failing;
};
using Compiled = std::map<std::string, Kernel>;  // dtype -> kernel: one schedule, every dtype

}  // namespace bn2d::tune
