#!/usr/bin/env bash
# The quick preset's 15-minute budget on this session's machine, and the three levers tried on it
# (issue "recipes": the moving average of the weights, TrivialAugment, AutoAugment), each alone, one seed,
# chosen on the preset's own 5,000-image validation split. Run from the repository root, one run
# at a time on an otherwise idle machine (flock: one measurement at a time). The data cache is
# warmed first, so each wall time is the run's own (a first run ever also decodes the archive).
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
LOCK=${LOCK:-/tmp/wrn-measure.lock}
python -c "import sys; from wrn.data import load_dataset; load_dataset(sys.argv[1])" "$DATA"
run() {  # NAME [key=value ...]
    name=$1; shift
    flock "$LOCK" /usr/bin/time -v wrn train --preset quick --data "$DATA" --out "runs/quick/$name" "$@" \
        > "runs/quick/$name.out" 2>&1
    mkdir -p "results/quick/$name"
    cp "runs/quick/$name/config.yaml" "runs/quick/$name/log.jsonl" "runs/quick/$name/summary.json" "results/quick/$name/"
    sed -i "s|$(cd .. && pwd)/shared/|../shared/|g" "results/quick/$name/"*  # the data path made relative
    grep -E "Elapsed \(wall clock\)|Maximum resident" "runs/quick/$name.out" > "results/quick/$name/time.txt"
}
mkdir -p runs/quick
run preset
run ema train.ema=0.999
run trivialaugment data.policy=trivialaugment
run autoaugment data.policy=autoaugment
