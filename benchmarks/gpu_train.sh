#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one script, in under 10 minutes of GPU time (a lent GPU gives 15
# in all; on an H100/H200 each model's compile warm-up is ~1 minute, its timed steps seconds).
# Prints a markdown table ready to paste, then the paper-speed rows; JSON in benchmarks/results/.
# The issue's targets on an H100: WRN-28-10 b128 >= 11k img/s end to end (>= 3x reference),
# WRN-16-8 >= 30k, WRN-40-4 >= 22k. The fast mode is the quick preset's accel section (bf16 +
# channels_last + torch.compile) with CUDA graphs (reduce-overhead) and the fused SGD; the
# reference mode uses a per-image DataLoader (4 workers, as public code does). The peak matmul may
# grow to 8192^2 (a 2048^2 product is too small to fill an H100).
#   benchmarks/gpu_train.sh [key=value ...]   # extra wrn bench overrides, e.g. accel.compile_mode=max-autotune
set -euo pipefail
cd "$(dirname "$0")"
echo "| model | device | CPU/GPU | mode | img/s | ratio to reference | % of peak | memory | command |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for model in wrn-28-10 wrn-16-8 wrn-40-4; do
  python - "$model" "$@" <<'PY'
import sys
from common import bench, rows
m, extra = sys.argv[1], sys.argv[2:]
r = bench([m, "accel.device=cuda", "--batch-size", "128", "--steps", "50", "--warmup", "20", "--repeats", "5",
           "--reference-workers", "4", "--peak-size", "8192", *extra], f"gpu-{m}-b128")
print("\n".join(rows(r)), flush=True)
PY
done
# The trivialaugment-cifar preset's training step: WRN-28-10 b128 with TrivialAugment-Wide + cutout 16,
# batched on the GPU (the JSON's "augment" holds the augmentation's share of the step). No reference
# and no eval: those are the first row's (~1 more minute: a second WRN-28-10 compile).
python - "$@" <<'PY'
import sys
from common import bench, rows
r = bench(["wrn-28-10", "accel.device=cuda", "--batch-size", "128", "--steps", "50", "--warmup", "20", "--repeats", "5",
           "--no-reference", "--no-eval", "--peak-size", "8192", "data.policy=trivialaugment", "data.cutout=16",
           *sys.argv[1:]], "gpu-wrn-28-10-b128-trivialaugment")
print("\n".join(rows(r, "trivialaugment-cifar")), flush=True)
PY
# Eager: compiling pre-act ResNet-1001 (1,000 layers) alone could take the whole GPU budget.
python paper_speed.py --device cuda --batch-size 128 --steps 20 --repeats 3 --no-compile "$@"
