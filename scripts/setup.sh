#!/usr/bin/env bash
# Install cttlstm and its dependencies into the current Python environment.
#
# On a machine without an NVIDIA GPU this pins the CPU build of torch 2.13.0 (and the
# matching torchvision 0.28.0 without its CUDA dependencies), instead of letting pip
# pull several GB of CUDA wheels. With a GPU, pip's default (CUDA) builds are used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip_install torch torchvision
    else
        pip_install "torch==2.13.0"
    fi
fi
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
    # torchvision minor = torch minor + 15 (2.13 <-> 0.28); --no-deps keeps the installed torch.
    tv=$("$PY" -c "import torch; v = torch.__version__.split('+')[0].split('.'); print(f'0.{int(v[1]) + 15}.*')")
    pip_install --no-deps "torchvision==$tv"
fi
pip_install -e ".[test]"
