#!/usr/bin/env bash
# The CPU reproduction (results/scale/README.md), as it ran on 2026-12-02 from 01:10 UTC on a
# 2-core AMD EPYC (Zen 2, AVX2 only): the depth table, then the block-types table. Run from the
# repository root. Resumable: run it again and finished runs are skipped, interrupted ones resume.
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
OUT=${OUT:-runs/scale}
# The paper's CIFAR recipe (paper-cifar: all 50,000 images, step schedule, fp32), scaled by epochs
# and width only: 4 epochs (lr drops scaled to epochs 1, 2, 3), width k x 0.125 (8 -> 1, 2 -> 1).
BUDGET="--epochs 4 --model-scale 0.125"
for table in depth block-types; do
  wrn sweep $table --dry-run --seeds 3 --out $OUT --data $DATA $BUDGET
  # One seed of every net first (a partial table is still a table), then the next seed.
  for seeds in 1 2 3; do
    nice -n 19 wrn sweep $table --seeds $seeds --out $OUT --data $DATA $BUDGET
  done
done
wrn report $OUT --out results/scale --timing-note "2-core AMD EPYC (AVX2), shared with development work"
