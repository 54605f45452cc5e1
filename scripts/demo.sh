#!/usr/bin/env bash
# Quick start 1: set up, build and run the demo (BatchNorm2d(100) on 20x100x35x45).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh" --target bn2d_demo
exec "${BN2D_BUILD_DIR:-$root/build}/examples/bn2d_demo"
