#!/usr/bin/env bash
# CPU time-to-accuracy: the quick preset on the real CIFAR-10 (JPEG copy), 2 cores, target >= 80%
# test accuracy within 15 minutes wall (aim 86%+). Run on a quiet machine; the figure is the
# summary's test_acc and wall_time_s. Overrides: see BENCHMARKS.md ("Time to accuracy").
#   flock /tmp/wrn-cpu.lock benchmarks/time_to_accuracy.sh [extra key=value ...]
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
OUT=${OUT:-runs/tta-$(date +%Y%m%d-%H%M%S)}
/usr/bin/time -v wrn train --preset quick --data "$DATA" --out "$OUT" "$@"
python - "$OUT" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
print(f"{s['model']}: test_acc {s['test_acc']:.4f} in {s['wall_time_s']:.0f} s wall ({s['img_per_s']:.0f} img/s)")
PY
