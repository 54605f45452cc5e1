"""bn2d: batch normalization with torch.nn.BatchNorm2d's semantics, as tuned AOT Halide kernels.

``bn2d.torch`` holds the PyTorch front end (a drop-in ``BatchNorm2d``, ``convert``, the
functional ``batch_norm``); this module the library's settings, as in C++ (bn2d/settings.h).
"""
from ._bn2d import (  # noqa: F401  (re-exported)
    Error,
    build_info,
    compiled_cpu_isas,
    cpu_strategy,
    last_cpu_isa_used,
    max_cpu_isa,
    num_threads,
    set_cpu_strategy,
    set_max_cpu_isa,
    set_num_threads,
    set_verbose,
)

__version__ = "0.1.0"
