"""Time and peak memory of `wrn import` on a RobustBench-sized WRN-70-16 (266.8M parameters, 1.07 GB
of fp32 weights) in DeepMind's layout: the issue's "seconds, not minutes; at most 3x the weights".

    python benchmarks/import_speed.py [--depth 70 --width 16] [--keep DIR]

Writes a DMWideResNet-layout checkpoint (DDP-wrapped, as RobustBench's files often are) into a
temporary folder, then runs `wrn import` in a fresh process and reports its wall time and peak
resident memory (ru_maxrss of the child; it counts the checkpoint's mmapped pages the import
touches). Weights are uninitialised memory: only sizes matter here. Not a test: a timing is a benchmark.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def dm_layout_state(depth: int, width: int, classes: int = 10) -> dict[str, torch.Tensor]:
    from wrn.models import create_model, layouts

    with torch.device("meta"):
        model = create_model(f"dm-wrn-{depth}-{width}", num_classes=classes)
    return {"module." + k: torch.empty(v.shape, dtype=v.dtype) if v.dtype.is_floating_point else torch.zeros((), dtype=v.dtype)
            for k, v in layouts.from_ours("dm", model.state_dict()).items()}


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=70)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary folder")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="wrn-import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"dm-wrn-{args.depth}-{args.width}.pt"
    state = dm_layout_state(args.depth, args.width)
    weights = sum(v.numel() * v.element_size() for v in state.values())
    torch.save({"state_dict": state}, src)
    del state
    out = work / "imported"
    cmd = [sys.executable, "-m", "wrn", "import", str(src), "--layout", "dm", "--out", str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    anon = 0  # sampled: ru_maxrss has no split into the process's own memory and mapped file pages
    while child.poll() is None:
        anon = max(anon, _rss_anon(child.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if child.returncode:
        return child.returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(f"dm-wrn-{args.depth}-{args.width}: weights {weights / 1e9:.2f} GB; `wrn import` {wall:.1f} s wall "
          f"(process start and torch import included); peak RSS {peak / 1e9:.2f} GB = {peak / weights:.2f}x the "
          f"weights, of which the process's own memory (RssAnon, sampled every 20 ms) {anon / 1e9:.2f} GB = "
          f"{anon / weights:.2f}x; the rest is the checkpoint's mmapped file pages (page cache)")
    print("command:", " ".join(cmd))
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
