#!/usr/bin/env bash
# Issue "recipes", item 5: each later paper's lever alone on the paper's CIFAR recipe, measured on
# the CPU at a labelled reduced budget (results/levers/README.md). Run from the repository root.
# Resumable on any machine: finished runs are skipped, interrupted ones resume from their checkpoint.
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
OUT=${OUT:-runs/levers}
# Each finished run's record (config.yaml, log.jsonl, summary.json: no checkpoint, the data path
# as given above) is committed here: a new machine starts from them, and the sweep skips those runs.
RECORDS=results/levers/runs
# paper-cifar on all 50,000 images, scaled: 6 epochs (lr drops at 2, 4, 5), WRN-28-10 trained as
# WRN-16-1 (width x 0.1, depth 16), bf16 + compile + channels_last (the CPU's fast path).
BUDGET="--epochs 6 --model-scale 0.1 --depth 16 accel.precision=bf16 accel.compile=true accel.channels_last=true"

. results/keep_records.sh

mkdir -p "$OUT" && cp -rn "$RECORDS"/. "$OUT"/ 2>/dev/null || true
wrn sweep levers --dry-run --seeds 3 --out "$OUT" --data "$DATA" $BUDGET
for seeds in 1 2 3; do  # one seed of every lever first: a partial table is still a table
  nice -n 19 wrn sweep levers --seeds $seeds --out "$OUT" --data "$DATA" $BUDGET
  keep_records "$OUT" "$RECORDS" "$DATA"
done
wrn report "$RECORDS" --out results/levers --timing-note "a 2-core AMD EPYC Zen 4 (AVX-512 with bf16), shared with development work"
