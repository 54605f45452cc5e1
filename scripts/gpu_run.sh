#!/usr/bin/env bash
# CUDA tests and GPU benchmarks on a GPU machine, in two steps:
#   scripts/gpu_run.sh bundle   # here: set up, build, and pack test_cuda, bn2d_bench_gpu and the
#                               # shared libraries they need into gpu_bundle/ (no Halide needed there)
#   scripts/gpu_run.sh run      # on the GPU machine, in a copy of the tree with gpu_bundle/:
#                               # runs the CUDA tests, then the benchmarks, and prints a table
# With OUT set (the device tool's output folder), logs and JSON go there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/gpu_bundle"
out="${OUT:-$root/out}"

case "${1:-}" in
bundle)
  "$root/scripts/bootstrap.sh"
  "$root/scripts/build.sh" --target test_cuda bn2d_bench_gpu
  build="${BN2D_BUILD_DIR:-$root/build}"
  rm -rf "$bundle" && mkdir -p "$bundle/lib"
  cp "$build/tests/test_cuda" "$build/bench/gpu/bn2d_bench_gpu" "$bundle/"
  # Non-libc shared libraries the binaries need (gtest, benchmark, cuDNN); the CUDA driver
  # (libcuda) comes from the GPU machine.
  for bin in "$bundle/test_cuda" "$bundle/bn2d_bench_gpu"; do
    ldd "$bin" | awk '/=> \// {print $3}' | grep -v -E '/lib(c|m|dl|pthread|rt|gcc_s|stdc\+\+)\.so|ld-linux' \
      | xargs -r -I{} cp -L -n {} "$bundle/lib/"
  done
  du -sh "$bundle"
  ;;
run)
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$bundle/lib:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt" || true
  "$bundle/test_cuda" --gtest_brief=1 2>&1 | tee "$out/test_cuda.log"
  "$bundle/bn2d_bench_gpu" --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
    --benchmark_min_time=0.2 --benchmark_out="$out/gpu_bench.json" --benchmark_out_format=json \
    > "$out/gpu_bench.txt" 2>&1
  python3 "$root/scripts/bench_report.py" "$out/gpu_bench.json" --bound-name copy --peers cudnn \
    --ours ours_cuda --markdown-out "$out/gpu_table.md" || cat "$out/gpu_bench.txt"
  ;;
*)
  echo "usage: $0 bundle|run" >&2
  exit 2
  ;;
esac
