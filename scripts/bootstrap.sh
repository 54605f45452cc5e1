#!/usr/bin/env bash
# Installs what the project needs, idempotently: Debian packages (apt-get, when root or via
# sudo) and the Python toolchain (Halide 21 wheel, cmake, ninja) in the project-local .venv.
# Takes seconds when everything is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian 12 packages, pinned to the versions this project was verified with. If a pinned
# version is gone from the mirror (a point release), the current one is installed instead.
debs=(
  g++=4:12.2.0-3
  python3-venv=3.11.2-1+b1
  libgtest-dev=1.12.1-0.2
  libbenchmark-dev=1.7.1-1
  libtorch-dev=1.13.1+dfsg-4
  libdnnl-dev=2.6.3-1
  pocl-opencl-icd=3.1-3+deb12u1
  ocl-icd-opencl-dev=2.3.1-1
  libpng-dev=1.6.39-2+deb12u4
  libopenmpi-dev=4.1.4-3+b1
  openmpi-bin=4.1.4-3+b1
  nlohmann-json3-dev=3.11.2-2          # the safetensors header's JSON
  qemu-user=1:7.2+dfsg-7+deb12u18+b3  # the emulated-CPU tests (AVX2 without AVX-512, SSE4.1)
  clang-format=1:14.0-55.7~deb12u1     # scripts/format.sh, checked by CI
  # The Python package (python/, scripts/install_python.sh): Debian's torch for /usr/bin/python3
  # (CPU, the build of libtorch-dev), the extension's headers, and what its tests and examples use.
  python3-torch=1.13.1+dfsg-4
  python3-torchvision=0.14.1-2
  python3-sklearn=1.2.1+dfsg-1
  python3-pytest=7.2.1-2
  python3-matplotlib=3.6.3-1+b1
  python3-dev=3.11.2-1+b1
  pybind11-dev=2.10.3-1
)

missing=()
for pin in "${debs[@]}"; do
  pkg="${pin%%=*}"
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pin")
  fi
done
# python3 -m venv needs ensurepip; a non-Debian python3 (pyenv) has it without python3-venv.
# Debian's /usr/bin/python3 needs it too, for .venv-python (scripts/install_python.sh).
if python3 -c "import ensurepip, venv" 2>/dev/null &&
  /usr/bin/python3 -c "import ensurepip, venv" 2>/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == python3-venv=* ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    echo "bootstrap: missing Debian packages: ${missing[*]%%=*}; run as root or install them." >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    echo "bootstrap: pinned versions unavailable; installing current ones" >&2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}"
  fi
fi

# Project-local Python toolchain; reinstalled only when requirements.txt changes.
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.bn2d-requirements"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
