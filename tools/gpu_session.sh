#!/usr/bin/env bash
# The README's missing GPU figures in one prepared device call, most needed first:
# train.py's speed (issue 6), `bench harmonize` at `demo` (issue 4), `bench flow`
# and `bench harmonize` at `reference` (issues 3 and 4). Each stage has its own
# time limit, prints as it goes, and a stage that runs out does not stop the next.
#
#     bash tools/gpu_wheels.sh                        # here, once (22 MB into .whl/)
#     device run: command "bash tools/gpu_session.sh", carry [".whl"], timeout_s 590
#
# Everything goes to $OUT/gpu_session.log (the device tool's $OUT; out/gpu_session
# elsewhere) plus the training run's metrics.json and the benchmarks' JSON. The
# stage limits sum to 540 s. Smoke test on a CPU:
#     TRAIN_PRESET=tiny TRAIN_STEPS=100 BENCH_PRESET=tiny BIG_PRESET=tiny bash tools/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_session.log") 2>&1

TRAIN_PRESET=${TRAIN_PRESET:-demo}
TRAIN_STEPS=${TRAIN_STEPS:-1000}       # validation (and a images/s reading) every 500 steps
BENCH_PRESET=${BENCH_PRESET:-demo}
BIG_PRESET=${BIG_PRESET:-reference}
WORK=${WORK:-/tmp/bh_gpu_session}      # checkpoints and data: too many files for $OUT

source tools/gpu_common.sh

stage 30 python3 -c "import jax, bh_jax; print(jax.__version__, jax.devices())"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi
stage 200 python3 train.py --data phantom --preset "$TRAIN_PRESET" --steps "$TRAIN_STEPS" \
    --workdir "$WORK/train-$TRAIN_PRESET" --data-dir "$WORK/data-$TRAIN_PRESET"
cp "$WORK/train-$TRAIN_PRESET/metrics.json" "$OUT/train-metrics.json" 2>/dev/null
stage 130 python3 -m bh_jax.bench harmonize --preset "$BENCH_PRESET" --batch-size 64 \
    --repeats 2 --solvers latent curve alternating image --json "$OUT/harmonize-$BENCH_PRESET-b64.json"
stage 90 python3 -m bh_jax.bench flow --preset "$BIG_PRESET" --batch-size 16 --repeats 2 \
    --json "$OUT/flow-$BIG_PRESET.json"
stage 90 python3 -m bh_jax.bench harmonize --preset "$BIG_PRESET" --batch-size 8 \
    --repeats 1 --solvers latent curve --json "$OUT/harmonize-$BIG_PRESET-b8.json"
echo "=== done after $SECONDS s"
