#!/usr/bin/env bash
# Quick start 2: set up, build everything and run every test (ctest, then the Python package's
# pytest suite). CUDA tests skip, with the reason, when no NVIDIA GPU is present; OpenCL tests
# run on PoCL (the CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh"
build="${BN2D_BUILD_DIR:-$root/build}"
cd "$build"
rc=0
# One test per core by default (the suite's tests are single-process or say how many they
# need); arguments after it (-j 1, -R, -L ...) override.
"$root/.venv/bin/ctest" --output-on-failure -j "$(nproc)" "$@" || rc=$?
# ctest shows only a count of skipped tests; say why they were skipped, once per reason.
log="$build/Testing/Temporary/LastTest.log"
if [[ -f "$log" ]] && grep -q ": Skipped$" "$log"; then
  echo "Skip reasons:"
  grep -A1 ": Skipped$" "$log" | grep -v -E ": Skipped$|^--$" | sort | uniq -c | sed 's/^/  /'
fi
# The Python package (pip install . into .venv-python; scripts/install_python.sh) and its pytest
# suite, against Debian's torch. BN2D_SKIP_PYTHON=1 skips it (e.g. when filtering ctest).
if [[ "${BN2D_SKIP_PYTHON:-0}" != 1 ]]; then
  echo "Python package: installing and running python/tests (pytest)"
  "$root/scripts/install_python.sh"
  "$root/.venv-python/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests" || rc=$?
fi
exit "$rc"
