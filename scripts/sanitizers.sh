#!/usr/bin/env bash
# The sanitizer jobs (CI runs both after the test suite). Halide's kernels are instrumented
# too (its asan and tsan target features), so an out-of-bounds access inside a kernel is
# reported like one in the module. Instrumented kernels take twice as long to compile, so
# these builds are subsets of the variant table: the baseline ISA (the schedules are the same
# for every ISA), and float32 + bfloat16 (4- and 2-byte elements) and the OpenCL kernels only
# (PoCL runs them; CUDA's would need a GPU) for ASan; tests of a dtype not built skip, saying so.
#   asan: AddressSanitizer + UBSan (every UB report fatal) over the CPU, OpenCL and MPI tests,
#         every layout, the large_buffers kernels; the fuzzer for BN2D_FUZZ_SECONDS (default 20).
#   tsan: ThreadSanitizer over the concurrency test (modules on several threads while another
#         changes the thread count), float32 kernels, with Halide's runtime built for TSan.
# Usage: scripts/sanitizers.sh [asan|tsan|all]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
job="${1:-all}"
"$root/scripts/bootstrap.sh"
cd "$root"
cmake="$root/.venv/bin/cmake"
ctest="$root/.venv/bin/ctest"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

if [[ "$job" == asan || "$job" == all ]]; then
  echo "== asan: AddressSanitizer + UBSan (module, tests, Halide kernels)"
  "$cmake" --preset asan >/dev/null
  "$cmake" --build --preset asan --target forward_test backward_test errors_test isa_test \
    variants_test layouts_dtypes_test large_tensors_test fuzz_test concurrency_test deploy_test \
    relu_test test_opencl sync_test
  # Leak checking stays on for the CPU tests. PoCL keeps driver allocations until exit, which
  # LeakSanitizer would report as leaks of the OpenCL test process.
  # The dense > 2^31-element test needs 9 GB, more than ASan's shadow and quarantine leave.
  ASAN_OPTIONS="detect_leaks=1" BN2D_FUZZ_SECONDS="${BN2D_FUZZ_SECONDS:-20}" \
    "$ctest" --preset asan -L cpu -E "DenseBatchOfMoreThan2To31Elements" -j2
  ASAN_OPTIONS="detect_leaks=0" "$ctest" --preset asan -L opencl -j2
  # SyncBatchNorm2d under mpirun (1, 2 and 3 processes). Open MPI keeps allocations past
  # MPI_Finalize, which LeakSanitizer would report.
  ASAN_OPTIONS="detect_leaks=0" "$ctest" --preset asan -L mpi
fi

if [[ "$job" == tsan || "$job" == all ]]; then
  echo "== tsan: ThreadSanitizer (module, concurrency test, Halide runtime)"
  "$cmake" --preset tsan >/dev/null
  "$cmake" --build --preset tsan --target concurrency_test
  TSAN_OPTIONS="halt_on_error=1" "$ctest" --preset tsan -R Concurrency
fi
