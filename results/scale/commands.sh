#!/usr/bin/env bash
# The CPU reproduction of the paper's depth effect (results/scale/README.md), as it ran on
# 2026-12-02 from 01:10 UTC on a 2-core AMD EPYC (Zen 2, AVX2 only). Run from the repository root.
# Resumable: run it again and finished runs are skipped, interrupted ones resume.
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
OUT=${OUT:-runs/scale}
# The paper's CIFAR recipe (paper-cifar: all 50,000 images, step schedule, fp32), scaled by epochs
# and width only: 4 epochs (lr drops scaled to epochs 1, 2, 3), width k = 8 x 0.125 = 1.
BUDGET="--epochs 4 --model-scale 0.125"
wrn sweep depth --dry-run --seeds 3 --out $OUT --data $DATA $BUDGET
# One seed of every net first (a partial table is still a table), then seeds 1 and 2.
for seeds in 1 3; do
  nice -n 19 wrn sweep depth --seeds $seeds --out $OUT --data $DATA $BUDGET
done
wrn report $OUT --out results/scale --timing-note "2-core AMD EPYC (AVX2), shared with development work"
