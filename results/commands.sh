#!/usr/bin/env bash
# The reduced reproduction behind results/README.md, exactly as it ran (2026-11-23, from 14:00 UTC,
# on the shared 2-core CPU machine). Run from the repository root; runs go to runs/repro (git-ignored).
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}   # run from the repository root
OUT=${OUT:-runs/repro}
BUDGET="--epochs 3 --subset 10000 --model-scale 0.5"
# A short-budget recipe instead of the paper's step schedule (which, squeezed into 3 epochs, drops
# the lr after every epoch): one-cycle (linear warmup over half an epoch to lr 0.2, linear decay to
# 0), label smoothing 0.1. `wrn sweep` puts the schedule in the budget label (-onecycle).
RECIPE="train.batch_size=128 optim.schedule=onecycle optim.lr=0.2 optim.warmup_epochs=0.5 optim.label_smoothing=0.1"
FAST="accel.precision=bf16 accel.channels_last=true accel.compile=false data.val_size=2000"
# One thread per process: with 2 threads on a 2-core machine shared with other jobs, OpenMP
# oversubscription made a step ~7x slower (14 vs 129 img/s measured for wrn-40-1 B(1,3,1)).
export OMP_NUM_THREADS=1

# What the sweep will do and what it costs (prints params next to the paper's):
wrn sweep block-types --dry-run --out $OUT --data $DATA $BUDGET $RECIPE $FAST

# 1 seed of each table (10 runs).
nice -n 10 wrn sweep block-types --out $OUT --data $DATA $BUDGET $RECIPE $FAST
nice -n 10 wrn sweep deepening --out $OUT --data $DATA $BUDGET $RECIPE $FAST
# A 2nd seed of the deepening table (seed 0 is skipped as finished).
nice -n 10 wrn sweep deepening --seeds 2 --out $OUT --data $DATA $BUDGET $RECIPE $FAST

# Tables + plots (REPORT.md, plots/*.png) into results/:
wrn report $OUT --out results --timing-note "shared 2-core CPU, 1 thread, provisional"
