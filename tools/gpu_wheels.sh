#!/usr/bin/env bash
# Downloads, into .whl/, the packages bh_jax needs that the lent H200 image lacks
# (it has jax 0.11.2 + CUDA 13, flax, optax, orbax-checkpoint, chex, scipy, tqdm,
# matplotlib, scikit-image; Python 3.12; no network). 22 MB; run once, here:
#
#     bash tools/gpu_wheels.sh
#
# The versions are the ones the test suite passes with on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 decorator==5.3.1 \
    gast==0.7.0 nibabel==5.4.2 nilearn==0.14.1
du -sh .whl
