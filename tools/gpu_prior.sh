#!/usr/bin/env bash
# A larger `demo`-grid prior trained on many more built-in subjects, in one prepared
# device call (issue 28): as many steps as TIME_LIMIT minutes of the accelerator allow
# (train.py --time-limit; a checkpoint at the limit), then the best params brought back
# as a few small files (tools/params_npz.py) to be re-checked on the CPU.
#
#     bash tools/gpu_wheels.sh                        # here, once (22 MB into .whl/)
#     device run: command "bash tools/gpu_prior.sh", carry [".whl"], timeout_s 560
#     python tools/params_npz.py import out/gpu_prior runs/prior-gpu   # here, afterwards
#
# $OUT (the device tool's; out/gpu_prior elsewhere) gets gpu_prior.log, params.npz,
# config.json, reference.npz, metrics.json (images/s and validation bits/dim every
# EVAL_EVERY steps). On the H200 (2026-11-30) rendering the 168 subjects took 70 s and the
# first step 61 s; the train stage must hold both plus TIME_LIMIT and a checkpoint (the
# first try, with a 5-minute limit in a 470 s stage, was cut while saving: 500 s now).
# Smoke test on a CPU:
#     PRESET=tiny SUBJECTS=8 MODEL="" STEPS=20 EVAL_EVERY=10 BATCH=16 TIME_LIMIT=0.5 \
#         bash tools/gpu_prior.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_prior}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_prior.log") 2>&1

PRESET=${PRESET:-demo}
SUBJECTS=${SUBJECTS:-160}             # training subjects (demo: 16 imaged everywhere + extra)
MODEL=${MODEL:-"--set flow.hidden=64 --set flow.steps=6 --set flow.bins=12"}
STEPS=${STEPS:-3000}                  # the schedule's length; the time limit may stop it first
BATCH=${BATCH:-64}
EVAL_EVERY=${EVAL_EVERY:-250}
TIME_LIMIT=${TIME_LIMIT:-4}           # minutes of the training loop (compile included)
WORK=${WORK:-/tmp/bh_gpu_prior}
# Full float32 products: TF32 cost nothing in speed on the H100 but broke round trips.
export JAX_DEFAULT_MATMUL_PRECISION=highest

source tools/gpu_common.sh

stage 30 python3 -c "import jax, bh_jax; print(jax.__version__, jax.devices())"
# shellcheck disable=SC2086  # MODEL is a list of options
stage 500 python3 train.py --data phantom --preset "$PRESET" --train-subjects "$SUBJECTS" \
    --data-dir "$WORK/data" --workdir "$WORK/train" --steps "$STEPS" --batch-size "$BATCH" \
    --set "train.eval_every=$EVAL_EVERY" $MODEL --time-limit "$TIME_LIMIT"
stage 60 python3 tools/params_npz.py export "$WORK/train" "$OUT"
cp "$WORK/train/samples.png" "$OUT/" 2>/dev/null  # only when every step ran
echo "=== done after $SECONDS s"
