// The one exception type of the library.
#pragma once

#include <stdexcept>

namespace bn2d {

// Every failure: bad arguments, kernel errors reported by Halide, missing GPU or driver.
// A call that throws leaves the module's state as it was.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

}  // namespace bn2d
