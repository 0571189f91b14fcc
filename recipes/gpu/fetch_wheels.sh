#!/usr/bin/env bash
# For a GPU machine without network access that has torch, transformers, triton and accelerate but not
# vector-quantize-pytorch (the shapes models' tokenizer): run this on a machine with pip access, copy
# .whl/ (ignored by git) beside the checkout, and `checks.sh` installs the wheels. Versions are the ones
# earl's CI installs, for Python 3.12 on x86-64.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 \
    torch-einops-utils==0.2.0
ls -l .whl
