#!/usr/bin/env bash
# Quick start 1: set up, build and run the demo (BatchNorm2d(100) on 20x100x35x45: checked
# against float64, timed per ISA).
#   scripts/demo.sh          the quick profile (CMakePresets.json "demo", in build-demo/): the
#                            float32 kernels for this CPU's best ISA and the portable baseline,
#                            CPU only; a few minutes on 2 cores
#   scripts/demo.sh --full   the full build (build/: every dtype, ISA and backend, as
#                            scripts/build.sh and scripts/test.sh build it)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
if [[ "${1:-}" == "--full" ]]; then
  "$root/scripts/build.sh" --target bn2d_demo
  exec "${BN2D_BUILD_DIR:-$root/build}/examples/bn2d_demo"
fi
cmake="$root/.venv/bin/cmake"
if [[ ! -f "$root/build-demo/CMakeCache.txt" ]]; then
  (cd "$root" && "$cmake" --preset demo >/dev/null)
fi
(cd "$root" && "$cmake" --build --preset demo --target bn2d_demo)
"$root/build-demo/examples/bn2d_demo"
echo
echo "(Quick profile: float32 kernels for this CPU's best ISA and baseline. scripts/demo.sh --full"
echo " builds every dtype, ISA and backend; scripts/test.sh builds them and runs every test.)"
