#!/usr/bin/env bash
# CUDA tests and GPU benchmarks on a GPU machine, in two steps:
#   scripts/gpu_run.sh bundle   # here: set up, build, and pack test_cuda, bn2d_bench_gpu,
#                               # nccl_test and the shared libraries they need into
#                               # gpu_bundle/bundle.tar.xz (~30 MB; no Halide needed there),
#                               # and the tuner with libHalide.so into
#                               # gpu_bundle_tuner/tuner.tar.xz (~46 MB): the device tool
#                               # carries 64 MiB a call, so each goes in a call of its own
#   scripts/gpu_run.sh run      # on the GPU machine, in a copy of the tree with gpu_bundle/:
#                               # runs the CUDA tests, SyncBatchNorm2d over NCCL (one rank), the
#                               # benchmarks, optionally a per-kernel profile (BN2D_PROFILE), the
#                               # tuner when gpu_bundle_tuner/ came along, and prints the NCHW
#                               # and NHWC tables and the tests' verdict last
#   scripts/gpu_run.sh tune     # on the GPU machine, with gpu_bundle_tuner/: the tuner's CUDA
#                               # mode alone (BN2D_TUNE_SECONDS, default 120)
# With OUT set (the device tool's output folder), logs and JSON go there. Time limits:
# BN2D_TEST_TIMEOUT, BN2D_BENCH_TIMEOUT (seconds); BN2D_BENCH_FILTER selects benchmarks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/gpu_bundle"
tuner_bundle="$root/gpu_bundle_tuner"
out="${OUT:-$root/out}"

# The tuner's CUDA mode (BN2D_TUNE_SECONDS, default 120; 0 skips it): CUDA knobs searched on
# this GPU, written to $out/cuda.params with its report ($out/cuda.tune.md).
run_tuner() {
  mkdir -p "$out"
  if [ -f "$tuner_bundle/tuner.tar.xz" ] && [ ! -x "$tuner_bundle/bn2d_tune" ]; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$tuner_bundle/tuner.tar.xz" "$tuner_bundle"
  fi
  if [ -x "$tuner_bundle/bn2d_tune" ] && [ "${BN2D_TUNE_SECONDS:-120}" != 0 ]; then
    tune_s="${BN2D_TUNE_SECONDS:-120}"
    LD_LIBRARY_PATH="$tuner_bundle/lib:${LD_LIBRARY_PATH:-}" timeout $((tune_s + 60)) \
      "$tuner_bundle/bn2d_tune" --backend cuda --budget-seconds "$tune_s" \
      --base "$root/schedules/machines/default.params" --out "$out/cuda.params" \
      --report "$out/cuda.tune" --autoschedulers none > "$out/tune.log" 2>&1 \
      || echo "bn2d_tune exit status: $?"
    tr '\r' '\n' < "$out/tune.log" | grep -E "candidates \(|done in|bn2d_tune:" || true
    python3 "$root/scripts/tune_report.py" "$out/cuda.tune.json" --markdown-out "$out/cuda.tune.md" \
      2>/dev/null | tail -12 || true
  fi
}

case "${1:-}" in
bundle)
  "$root/scripts/bootstrap.sh"
  "$root/scripts/build.sh" --target test_cuda bn2d_bench_gpu bn2d_tune nccl_test
  build="${BN2D_BUILD_DIR:-$root/build}"
  rm -rf "$bundle" && mkdir -p "$bundle/lib"
  rm -rf "$tuner_bundle" && mkdir -p "$tuner_bundle/lib"
  cp "$build/tests/test_cuda" "$build/bench/gpu/bn2d_bench_gpu" "$build/tests/nccl_test" "$bundle/"
  cp "$build/tools/bn2d_tune" "$tuner_bundle/"
  strip "$bundle/test_cuda" "$bundle/bn2d_bench_gpu" "$tuner_bundle/bn2d_tune" "$bundle/nccl_test"
  # Non-system shared libraries the binaries need (Google Benchmark, Open MPI's, cudart). cuDNN 9
  # and NCCL are not packed: cuDNN's engine libraries are hundreds of MB, and the GPU machine has
  # its own of both (found at run time); the CUDA driver (libcuda) comes from the GPU machine too.
  # The tuner JIT-compiles: it takes libHalide.so along (165 MB, 45 MB packed).
  copy_libs() {  # binary, destination
    { ldd "$1" | awk '/=> \// {print $3}' \
        | grep -v -E '/lib(c|m|dl|pthread|rt|gcc_s|stdc\+\+)\.so|ld-linux|libcudnn|libnccl' || true; } \
      | xargs -r -I{} cp -L -n {} "$2/lib/"
  }
  for bin in test_cuda bn2d_bench_gpu nccl_test; do copy_libs "$bundle/$bin" "$bundle"; done
  copy_libs "$tuner_bundle/bn2d_tune" "$tuner_bundle"
  # Packed: the stripped binaries are ~80 MB each (every CPU and GPU kernel variant) and
  # compress to ~9 MB.
  tar -C "$bundle" -cf - test_cuda bn2d_bench_gpu nccl_test lib | xz -T0 -6 > "$bundle.tar.xz"
  tar -C "$tuner_bundle" -cf - bn2d_tune lib | xz -T0 -6 > "$tuner_bundle.tar.xz"
  rm -rf "$bundle" "$tuner_bundle" && mkdir -p "$bundle" "$tuner_bundle"
  mv "$bundle.tar.xz" "$bundle/bundle.tar.xz"
  mv "$tuner_bundle.tar.xz" "$tuner_bundle/tuner.tar.xz"
  du -sh "$bundle" "$tuner_bundle"
  ;;
run)
  mkdir -p "$out"
  if [ -f "$bundle/bundle.tar.xz" ] && [ ! -x "$bundle/test_cuda" ]; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$bundle/bundle.tar.xz" "$bundle"
  fi
  # cuDNN 9: the machine's toolkit, or the one in its Python environment (PyTorch's wheel).
  cudnn_dir=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu \
           $(python3 -c 'import nvidia.cudnn as m; print(m.__path__[0] + "/lib")' 2>/dev/null); do
    if [ -e "$d/libcudnn.so.9" ]; then cudnn_dir="$d"; break; fi
  done
  echo "cuDNN from: ${cudnn_dir:-not found}" | tee "$out/gpu.txt"
  nccl_dir=""
  for d in /usr/local/cuda/lib /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu \
           $(python3 -c 'import nvidia.nccl as m; print(m.__path__[0] + "/lib")' 2>/dev/null); do
    if [ -e "$d/libnccl.so.2" ]; then nccl_dir="$d"; break; fi
  done
  echo "NCCL from: ${nccl_dir:-not found}" | tee -a "$out/gpu.txt"
  export LD_LIBRARY_PATH="$bundle/lib:${cudnn_dir:+$cudnn_dir:}${nccl_dir:+$nccl_dir:}${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
    | tee -a "$out/gpu.txt" || true
  # Time limits keep a run inside a device lease: a hang is reported, not waited out.
  timeout "${BN2D_TEST_TIMEOUT:-240}" "$bundle/test_cuda" --gtest_brief=1 \
    > "$out/test_cuda.log" 2>&1 && test_rc=0 || test_rc=$?
  grep -E '^\[  (FAILED|PASSED|SKIPPED) |tests? ran|Failure|Expected|Which is|error' "$out/test_cuda.log" \
    | head -60 || true
  echo "test_cuda exit status: $test_rc"
  # SyncBatchNorm2d over NCCL with one rank (no mpirun needed).
  timeout 120 "$bundle/nccl_test" > "$out/nccl_test.log" 2>&1 && nccl_rc=0 || nccl_rc=$?
  grep -E '^\[  (FAILED|PASSED|SKIPPED) |Failure|error' "$out/nccl_test.log" | head -20 || true
  echo "nccl_test exit status: $nccl_rc"
  timeout "${BN2D_BENCH_TIMEOUT:-300}" "$bundle/bn2d_bench_gpu" --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true --benchmark_min_time=0.1 \
    --benchmark_filter="${BN2D_BENCH_FILTER:-.}" \
    --benchmark_out="$out/gpu_bench.json" --benchmark_out_format=json > "$out/gpu_bench.txt" 2>&1 \
    || echo "bn2d_bench_gpu exit status: $?"
  # Optional per-kernel times (Nsight Compute) of our ops on two shapes: where the time goes.
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
  if [ -n "${BN2D_PROFILE:-}" ] && [ -n "$ncu_bin" ]; then
    for case in ${BN2D_PROFILE}; do  # e.g. "train_fwd/ours_cuda/32x64x112x112"
      name=$(echo "$case" | tr '/' '_')
      timeout 90 "$ncu_bin" --metrics gpu__time_duration.sum --csv -c 40 "$bundle/bn2d_bench_gpu" \
        --benchmark_filter="^$case/" --benchmark_min_time=0.001 --benchmark_repetitions=1 \
        > "$out/ncu.csv" 2>&1 || true
      echo "## kernels of $case (us, first 40 launches: warm-up calls)" | tee -a "$out/ncu.txt"
      python3 - "$out/ncu.csv" <<'PY' | tee -a "$out/ncu.txt" || true
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit(0)
h = rows[0]; k = h.index("Kernel Name"); v = h.index("Metric Value"); u = h.index("Metric Unit")
t = collections.OrderedDict()
for r in rows[1:]:
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3}.get(r[u], 1e-3)
    t.setdefault(r[k][:60], []).append(float(r[v].replace(",", "")) * scale)
for name, xs in t.items(): print("%8.1f x%-3d %s" % (sorted(xs)[len(xs)//2], len(xs), name))
PY
    done
  fi
  # Two tables: NCHW (ours vs cuDNN NCHW) and NHWC (ours channels_last vs cuDNN NHWC).
  for layout in nchw nhwc; do
    suffix=$([ "$layout" = nhwc ] && echo _nhwc || true)
    echo "## $layout"
    python3 "$root/scripts/bench_report.py" "$out/gpu_bench.json" --bound-name copy --no-plot \
      --peers "cudnn$suffix" --ours "ours_cuda$suffix" --markdown-out "$out/gpu_table_$layout.md" \
      2>/dev/null || tail -20 "$out/gpu_bench.txt"
  done
  if [ -f "$tuner_bundle/tuner.tar.xz" ]; then
    run_tuner
  else
    echo "tuner: gpu_bundle_tuner/ not here (carry it in a call of its own: scripts/gpu_run.sh tune)"
  fi
  # Last, where a truncated log still shows it: the CUDA tests' verdict.
  echo "test_cuda exit status: $test_rc; $(grep -E '^\[  (PASSED|FAILED) ' "$out/test_cuda.log" | tr '\n' ' ')"
  echo "nccl_test exit status: $nccl_rc"
  ;;
tune)
  run_tuner
  ;;
*)
  echo "usage: $0 bundle|run|tune" >&2
  exit 2
  ;;
esac
