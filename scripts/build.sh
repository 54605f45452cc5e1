#!/usr/bin/env bash
# Configures and builds the project (Release) into build/ with the .venv toolchain.
# Usage: scripts/build.sh [cmake --build args...], e.g. scripts/build.sh --target bn2d_demo
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BN2D_BUILD_DIR:-$root/build}"
venv="$root/.venv"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  "$venv/bin/cmake" -S "$root" -B "$build" -G Ninja \
    -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DCMAKE_PREFIX_PATH="$venv" \
    -DCMAKE_BUILD_TYPE=Release ${BN2D_CMAKE_ARGS:-}
fi
"$venv/bin/cmake" --build "$build" "$@"
