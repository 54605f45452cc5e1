#!/usr/bin/env bash
# A/B of two builds of the same kernels, alternated with the floor in one process
# (tools/kernel_ab.cpp): the only way to see a 5-20% effect on a machine whose bandwidth moves
# 30-60% between runs. Builds training forward and backward (f32 NCHW, this CPU's best of
# AVX-512 and AVX2, with streaming stores where the rows are whole lines, as the runtime picks)
# from the project's generator, both ways:
#   prefetch       pipelined_groups 1 against 4 (docs/schedules_and_tuning.md)
#   relu           training backward without and with the ReLU's mask (the same kernel, its
#                  run-time switch off and on, on the same buffers): what the mask costs
# Usage: scripts/kernel_ab.sh prefetch|relu [repetitions]   (after scripts/build.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BN2D_BUILD_DIR:-$root/build}"
gen="$build/bn2d_generators"
py="$root/.venv/bin/python"
halide_include="$("$py" -c 'import halide, os; print(os.path.join(os.path.dirname(halide.__file__), "include"))')"
mode="${1:?usage: scripts/kernel_ab.sh prefetch|relu [repetitions]}"
work="$build/kernel_ab/$mode"
mkdir -p "$work"
if grep -q avx512f /proc/cpuinfo; then target=x86-64-linux-avx512_skylake; else target=x86-64-linux-avx2-fma-f16c; fi
defaults="$root/schedules/machines/default.params"
relu_b=0
case "$mode" in
  prefetch)  # the default machine file with only pipelined_groups changed, for both ops
    ops=(fwd bwd); labels=("no prefetch" "prefetch"); groups=(1 4);;
  relu)  # the default machine file both ways; b is called with the ReLU's switch on
    ops=(bwd); labels=("plain" "ReLU"); groups=("" ""); relu_b=1;;
  *) echo "unknown mode '$mode' (prefetch, relu)" >&2; exit 2;;
esac
for v in 0 1; do
  side=$([[ $v == 0 ]] && echo a || echo b)
  if [[ -n "${groups[$v]}" ]]; then
    { grep -v "pipelined_groups" "$defaults"
      printf 'cpu.train_fwd.pipelined_groups = %s\ncpu.train_bwd.pipelined_groups = %s\n' \
        "${groups[$v]}" "${groups[$v]}"; } > "$work/$side.params"
  else
    cp "$defaults" "$work/$side.params"
  fi
  for op in "${ops[@]}"; do
    if [[ $op == fwd ]]; then args=(-g bn2d_train_forward); output=y
    else args=(-g bn2d_backward mode=train); output=grad_input; fi
    common=("${args[@]}" target=$target-no_runtime dtype=f32 layout=nchw "schedule_file=$work/$side.params")
    name="ab_${op}_${side}_nt"
    "$gen" -n "$name" -f "$name" -e bitcode,h -o "$work" "${common[@]}" streaming_stores=true
    "$py" "$root/tools/streaming_stores.py" "$work/$name.bc" "$work/$name.o" "$output"
    name="ab_${op}_${side}_plain"
    "$gen" -n "$name" -f "$name" -e object,h -o "$work" "${common[@]}"
  done
done
"$gen" -r ab_runtime -o "$work" target=$target
g++ -O2 -std=c++17 -I"$work" -I"$root/bench" -I"$halide_include" \
  -DAB_FORWARD=$([[ " ${ops[*]} " == *" fwd "* ]] && echo 1 || echo 0) \
  -DAB_LABEL_A="\"${labels[0]}\"" -DAB_LABEL_B="\"${labels[1]}\"" -DAB_RELU_B=$relu_b \
  "$root/tools/kernel_ab.cpp" "$work"/ab_*.o "$work/ab_runtime.a" -o "$work/kernel_ab" -ldl -lpthread
for shape in "20 100 35 45" "32 64 112 112" "32 256 56 56" "32 512 28 28" "32 2048 7 7" "1 3 1080 1920"; do
  "$work/kernel_ab" $shape "${2:-31}"
done
