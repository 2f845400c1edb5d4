#!/usr/bin/env bash
# Here, once before using a lent GPU machine, from the project root: fills the git-ignored
# .whl/ (Flower & co. from ../shared/gpu/wheels.txt, plus simulations/gpu/gpu_wheels.txt) and
# .gpu-data/ (the datasets named, default omniglot) for Python 3.12 on x86-64 Linux. Then
# copy both beside the checkout on the GPU machine, e.g. for `bash simulations/gpu/gpu_omniglot.sh`.
#     bash simulations/gpu/gpu_prepare.sh [datasets...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/prepare.sh "${@:-omniglot}"
grep -v '^#' simulations/gpu/gpu_wheels.txt | grep . >/tmp/gpu-wheels.txt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d .whl -r /tmp/gpu-wheels.txt
ls .whl | wc -l | xargs echo "wheels in .whl:"
