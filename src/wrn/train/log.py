"""Run output for machines and humans: ``log.jsonl``, a progress bar, one line per epoch.

log.jsonl holds one JSON object per line (``"kind": "step" | "epoch" | ...``), flushed as written,
so a killed run leaves every line it finished. Humans get a tqdm bar on a terminal (none when
stderr is not a TTY or with --quiet) and a one-line summary per epoch (none with --quiet).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from wrn.fsio import write_atomic


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: a diverged loss is logged as null rather than an unreadable line.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """Appends records to ``out_dir/log.jsonl``; ``enabled=False`` (non-main ranks) writes nothing."""

    def __init__(self, out_dir: Path, *, enabled: bool = True, quiet: bool = False):
        self.path = Path(out_dir) / "log.jsonl"
        self.enabled = enabled
        self.quiet = quiet or not enabled
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def info(self, message: str) -> None:
        """A line for humans on stderr (kept off stdout so that --json outputs stay clean)."""
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def progress(self, total: int, initial: int, desc: str) -> tqdm:
        return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                    disable=self.quiet or not sys.stderr.isatty(), file=sys.stderr)

    def epoch_line(self, r: dict[str, Any], epochs: int) -> None:
        parts = [f"epoch {r['epoch'] + 1}/{epochs}", f"lr {r['lr']:.4g}",
                 f"loss {r['train_loss']:.4f}", f"train {100 * r['train_acc']:.2f}%"]
        if r.get("val_acc") is not None:
            parts.append(f"val {100 * r['val_acc']:.2f}%")
        if r.get("test_acc") is not None:
            parts.append(f"test {100 * r['test_acc']:.2f}%")
        parts += [f"{r['epoch_time_s']:.1f}s", f"{r['img_per_s']:.0f} img/s"]
        self.info(" | ".join(parts))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_log(out_dir: Path, step: int) -> None:
    """Drop lines written after the checkpoint a resume starts from (the resumed run writes them
    again), so that a resumed log.jsonl reads like an uninterrupted one."""
    path = Path(out_dir) / "log.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept).encode())


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def git_commit() -> str | None:
    """The commit of the code that ran, when the package sits in a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None
