#!/usr/bin/env bash
# Installs the Python package bn2d (`pip install .`, pyproject.toml) into .venv-python, a venv
# of Debian's /usr/bin/python3 that sees Debian's python3-torch (torch lives in that
# interpreter's packages, not in the python3 first on PATH). The wheel links this checkout's
# build: it is built (scripts/build.sh) and installed into build/python-prefix first, so only
# the extension compiles here.
# Then: .venv-python/bin/python -c "import bn2d.torch"  (or activate the venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BN2D_BUILD_DIR:-$root/build}"
python="${BN2D_PYTHON:-/usr/bin/python3}"
venv="$root/.venv-python"
"$root/scripts/bootstrap.sh"
"$root/scripts/build.sh"
"$root/.venv/bin/cmake" --install "$build" --prefix "$build/python-prefix" >/dev/null
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv --system-site-packages "$venv"
fi
req="$root/python/requirements-build.txt"
stamp="$venv/.bn2d-requirements"
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
# No build isolation: the pinned build requirements above, and Debian's pybind11 (pybind11-dev).
CMAKE_GENERATOR=Ninja "$venv/bin/python" -m pip install -q --disable-pip-version-check \
  --no-build-isolation \
  --config-settings=build-dir="$build/python-wheel" \
  --config-settings=cmake.define.CMAKE_PREFIX_PATH="$build/python-prefix;$root/.venv" \
  "$root"
"$venv/bin/python" -c "import bn2d, torch; print(f'bn2d {bn2d.__version__} installed in $venv (torch {torch.__version__})')"
