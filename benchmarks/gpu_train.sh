#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md (unmeasured so far: no GPU was lent to this task).
# The issue's targets on an H100: WRN-28-10 b128 >= 11k img/s end to end (>= 3x reference),
# WRN-16-8 >= 30k, WRN-40-4 >= 22k. The fast mode compiles with CUDA graphs (reduce-overhead)
# and the fused SGD; the reference mode uses a per-image DataLoader (4 workers, as public code does).
set -euo pipefail
cd "$(dirname "$0")"
for model in wrn-28-10 wrn-16-8 wrn-40-4; do
  python - "$model" <<'PY'
import sys
from common import bench, rows
m = sys.argv[1]
r = bench([m, "--device", "cuda", "--batch-size", "128", "--steps", "50", "--warmup", "20", "--repeats", "5",
           "--reference-workers", "4"], f"gpu-{m}-b128")
print("\n".join(rows(r)))
PY
done
python paper_speed.py --device cuda --batch-size 128 --steps 20 --repeats 3 --compile
