#!/usr/bin/env bash
# The default method against Nyul, HM and the rest on the demo data, in one
# prepared device call (issue 27): the TEST subjects' tables with the held-out
# intensity maps (Table 4), then the same on the VALIDATION subjects. Without the
# learned baselines (--no-learned): training them took 4 of the 8.5 minutes of the
# first try on an H200, which then ran out of time compiling the site fits.
#
#     bash tools/gpu_wheels.sh                        # here, once (22 MB into .whl/)
#     device run: command "bash tools/gpu_quality.sh", carry [".whl"], timeout_s 560
#
# Everything goes to $OUT (the device tool's; out/gpu_quality elsewhere):
# gpu_quality.log and each stage's quality.{md,json}. Stage limits sum to 520 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_quality}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_quality.log") 2>&1
WORK=${WORK:-/tmp/bh_gpu_quality}
CHECKPOINT=${CHECKPOINT:-bh_jax/pretrained/demo}

export TQDM_MININTERVAL=20
source tools/gpu_common.sh

keep() {  # keep STAGE: its tables back under $OUT
    for f in quality.md quality.json; do
        cp "$WORK/$1/$f" "$OUT/$1-$f" 2>/dev/null
    done
}

stage 30 python3 -c "import jax, bh_jax; print(jax.__version__, jax.devices())"
stage 360 python3 -m bh_jax.bench quality --checkpoint "$CHECKPOINT" --data-dir "$WORK/data" \
    --out "$WORK/test" --batch-size 64 --heldout-maps --no-learned
keep test
stage 130 python3 -m bh_jax.bench quality --checkpoint "$CHECKPOINT" --data-dir "$WORK/data" \
    --out "$WORK/val" --batch-size 64 --split val --no-learned \
    --segmenter "$WORK/test/baselines/segmenter"
keep val
echo "=== done after $SECONDS s"
