// The problems the tuner measures on (a shape in a dtype) and the memory it measures with.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "Halide.h"
#include "problems.h"

namespace bn2d::tune {

using bn2d::problems::Shape;

// One problem: a shape in a dtype.
struct Problem {
    Shape shape;
    std::string dtype;
    std::string name() const { return shape.name() + " " + dtype; }
};

// --shapes: a file of descriptors, or set:<name> for a set of tests/problems.txt.
std::vector<Shape> load_shapes(const std::string &file);

int dtype_bytes(const std::string &d);

// Raw memory, freed with its last owner. Large blocks are 2 MB aligned and asked for huge pages:
// first-touching a suite's tensors in 4 KB pages took 13 s of kernel time here (500K faults).
struct Memory {
    std::shared_ptr<uint8_t> bytes;
    size_t size = 0;
    static Memory allocate(size_t n);
};

// Random values (never zero) of `type` for `name`: statistics and weights in their ranges.
void fill_random(const Memory &m, size_t count, Halide::Type type, const std::string &name,
                 uint32_t seed);

// Element i of a buffer's memory as a double (bfloat16 is stored as uint16).
double element(const Halide::Runtime::Buffer<> &b, size_t i);

// The halide_buffer_t view of a dense tensor. As the runtime presents it to our kernels
// (runtime/src/halide_glue.cpp): nchw, a plane as one row of H*W (w, 1, c, n); nhwc, N*H*W rows
// of C values. As plain 4-D (w, h, c, n), the shape the Generators' estimates describe: the
// "nchw4d" and "nhwc4d" views, which the autoschedulers get (their schedules assume it: Adams2019
// tiles h and reads outside an h extent of 1).
std::vector<halide_dimension_t> tensor_dims(const Shape &s, const std::string &view);

}  // namespace bn2d::tune
