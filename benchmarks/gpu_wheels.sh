#!/usr/bin/env bash
# The Python packages cttlstm needs that the lent GPU machine's image lacks, as wheels in .whl/, so that
# a GPU session carries them instead of installing anything there (the machine reaches no network).
# Run it here (it needs PyPI), then on the GPU machine, with .whl carried:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh --out "$OUT" --work /tmp/gpu-check-work
#
# The image has torch, numpy, typer, rich, h5py, PyYAML, imageio, scikit-image and matplotlib (its package
# list, as the device tool documents it) but not pydantic and its three dependencies. Its Python is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
for spec in pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5; do
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" "$spec"
done
ls -l "$DEST"
