#!/usr/bin/env bash
# The paper's time column (WRN-40-4 vs pre-act ResNet-1001, time per training epoch), measured by
# the sweep itself, as it ran on 2026-12-02 05:05-05:11 UTC on a 2-core AMD EPYC (Zen 2, AVX2
# only), quiet. Run from the repository root. Only the time column is the result: one epoch of
# 1,000 images says nothing about accuracy (the report's error columns are noise).
set -eu
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
SMALL=runs/cifar10-speed-data  # 100 training and 20 test images per class, as PNG folders
OUT=${OUT:-runs/speed}
# A small folder keeps the final test evaluation of the 1001-layer net (10,000 images: ~10 min
# on this CPU) out of the cost; the time per epoch is per image either way.
python - "$DATA" "$SMALL" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from wrn.data import load_dataset
data, root = load_dataset(sys.argv[1]), Path(sys.argv[2])
for split, per_class in (("train", 100), ("test", 20)):
    d = data[split]
    labels = np.asarray(d.labels)
    for c, name in enumerate(d.classes):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(np.asarray(d.images[i])).save(root / split / name / f"{i:05d}.png")
PY
wrn sweep speed --epochs 1 --data $SMALL --out $OUT
wrn report $OUT --out results/speed --no-plots --timing-note "2-core AMD EPYC (Zen 2, AVX2), fp32 eager, batch 128, quiet"
