#!/usr/bin/env bash
# The CPU reproduction (results/scale/README.md): the depth, block-types, deepening, dropout and width tables.
# Run from the repository root. Resumable on any machine: finished runs are skipped, interrupted
# ones resume from their checkpoint.
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
OUT=${OUT:-runs/scale}
# Each finished run's record (config.yaml, log.jsonl, summary.json: no checkpoint, the data path
# as given above) is committed here: a new machine starts from them, and the sweep skips those runs.
RECORDS=results/scale/runs
# The paper's CIFAR recipe (paper-cifar: all 50,000 images, step schedule, fp32), scaled by epochs
# and width only: 4 epochs (lr drops scaled to epochs 1, 2, 3), width k x 0.125 (8 -> 1, 2 -> 1).
BUDGET="--epochs 4 --model-scale 0.125"

. results/keep_records.sh

run_table() {  # TABLE [OPTIONS]: print the plan and cost, then one seed of every net first (a
  # partial table is still a table), then the next seed
  wrn sweep "$@" --dry-run --seeds 3 --out "$OUT" --data "$DATA"
  for seeds in 1 2 3; do
    nice -n 19 wrn sweep "$@" --seeds $seeds --out "$OUT" --data "$DATA"
    keep_records "$OUT" "$RECORDS" "$DATA"
  done
}

mkdir -p "$OUT" && cp -rn "$RECORDS"/. "$OUT"/
run_table depth $BUDGET
run_table block-types $BUDGET
run_table deepening $BUDGET
# Dropout on CIFAR-10 only: the paper's CIFAR-100 and SVHN rows would triple its cost.
run_table dropout --dataset cifar10 $BUDGET
# Width at a fixed depth of 40 (k = 1, 2, 4) is the one variable that cannot be scaled by width
# (k = 1 is the floor): full width, 4 epochs. ~24 h at 3 seeds on a 2-core AVX2 EPYC (--dry-run).
run_table width --epochs 4
# The depth table's runs (2026-12-02, before records were kept) left only depth.csv and their
# REPORT.md section, which a report into results/scale keeps beside the tables it regenerates.
wrn report "$RECORDS" --out results/scale --timing-note "2-core AMD EPYCs (AVX2; Zen 2 for depth, Zen 3 for block types, deepening, dropout and width), shared with development work"
