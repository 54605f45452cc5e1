#!/usr/bin/env bash
# A/B of the prefetch of the next channel group (README, "Prefetching the next channel group"):
# builds training forward and backward (f32 NCHW, streaming stores, this CPU's best of AVX-512
# and AVX2) with pipelined_groups 1 and 4 from the project's generator, and alternates them
# with the floor in one process (tools/prefetch_ab.cpp) on the DRAM-bound suite shapes.
# Usage: scripts/prefetch_ab.sh [repetitions]   (after scripts/build.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BN2D_BUILD_DIR:-$root/build}"
gen="$build/bn2d_generators"
py="$root/.venv/bin/python"
halide_include="$("$py" -c 'import halide, os; print(os.path.join(os.path.dirname(halide.__file__), "include"))')"
work="$build/prefetch_ab"
mkdir -p "$work"
if grep -q avx512f /proc/cpuinfo; then target=x86-64-linux-avx512_skylake; else target=x86-64-linux-avx2-fma-f16c; fi
for groups in 1 4; do
  # The default machine file with only pipelined_groups changed.
  grep -v "pipelined_groups" "$root/schedules/machines/default.params" > "$work/pg$groups.params"
  printf 'cpu.train_fwd.pipelined_groups = %s\ncpu.train_bwd.pipelined_groups = %s\n' \
    "$groups" "$groups" >> "$work/pg$groups.params"
  for op in fwd bwd; do
    name="ab_${op}_pg$groups"
    if [[ $op == fwd ]]; then args=(-g bn2d_train_forward); output=y; else args=(-g bn2d_backward mode=train); output=grad_input; fi
    "$gen" -n "$name" -f "$name" -e bitcode,h -o "$work" "${args[@]}" target=$target-no_runtime \
      dtype=f32 layout=nchw streaming_stores=true "schedule_file=$work/pg$groups.params"
    "$py" "$root/tools/streaming_stores.py" "$work/$name.bc" "$work/$name.o" $output
  done
done
"$gen" -r ab_runtime -o "$work" target=$target
g++ -O2 -std=c++17 -I"$work" -I"$root/bench" -I"$halide_include" "$root/tools/prefetch_ab.cpp" \
  "$work"/ab_*_pg*.o "$work/ab_runtime.a" -o "$work/prefetch_ab" -ldl -lpthread
for shape in "32 64 112 112" "32 256 56 56" "32 512 28 28" "1 3 1080 1920"; do
  "$work/prefetch_ab" $shape "${1:-31}"
done
