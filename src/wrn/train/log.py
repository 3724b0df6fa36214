"""Run output for machines and humans: ``log.jsonl``, a progress bar, one line per epoch.

log.jsonl holds one JSON object per line (``"kind": "step" | "epoch" | ...``), flushed as written,
so a killed run leaves every line it finished. Humans get a tqdm bar on a terminal (none when
stderr is not a TTY or with --quiet) and a one-line summary per epoch (none with --quiet).
With ``log.tensorboard=true`` the same numbers also go to TensorBoard (``out_dir/tensorboard``):
each record's numbers as scalars ``<kind>/<key>`` at its optimizer step, and the run's
hyperparameters (``RunLog.hparams``).
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from wrn.errors import UserError
from wrn.rundir import LOG, log_line

# tqdm's default lock includes a process-shared semaphore: a process killed while drawing (SIGKILL,
# out of memory) leaves it held, and every process forked from the same parent then hangs at its
# next bar or tqdm.write. Only one process of a run draws, so a lock of this process's own suffices.
tqdm.set_lock(threading.RLock())

TENSORBOARD_HINT = 'pip install -e ".[tb]"'
# Records whose numbers become TensorBoard scalars; start/resume/estimate hold settings, not curves.
SCALAR_KINDS = ("step", "epoch", "end")
# The metrics TensorBoard's hparams view tabulates per run (scalars written under these tags).
HPARAM_METRICS = ("epoch/val_acc", "epoch/train_loss", "end/test_acc")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def summary_writer_class():
    """torch's TensorBoard ``SummaryWriter``; a UserError when TensorBoard is not installed.

    Imported on demand: TensorBoard is the optional ``tb`` extra, and importing it costs every
    run that does not ask for it about a second."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"log.tensorboard=true needs TensorBoard: {TENSORBOARD_HINT}, or set log.tensorboard=false") from None
    return SummaryWriter


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; values TensorBoard's hparams take
    (bool, int, float, str); lists and None as text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class RunLog:
    """Appends records to ``out_dir/log.jsonl``; ``enabled=False`` (non-main ranks) writes nothing.

    ``tensorboard=True`` also writes them to ``out_dir/tensorboard``; ``resume_step`` (the step of
    the checkpoint a resumed run starts from) hides the TensorBoard events the interrupted run wrote
    after it, as ``rundir.truncate_log(out_dir, resume_step)`` drops them from log.jsonl.
    """

    def __init__(self, out_dir: Path, *, enabled: bool = True, quiet: bool = False, tensorboard: bool = False,
                 resume_step: int | None = None):
        self.path = Path(out_dir) / LOG
        self.enabled = enabled
        self.quiet = quiet or not enabled
        # Checked before anything is opened: a missing TensorBoard leaves no file behind.
        writer_class = summary_writer_class() if tensorboard and enabled else None
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None
        self._tb = (writer_class(log_dir=str(Path(out_dir) / "tensorboard"), flush_secs=30,
                                 purge_step=None if resume_step is None else resume_step + 1)
                    if writer_class else None)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(log_line(record))
        self._file.flush()
        if self._tb is not None and record.get("kind") in SCALAR_KINDS and isinstance(record.get("step"), int):
            for key, value in record.items():
                value = _number(value)
                if value is not None and key not in ("kind", "step", "epoch"):
                    self._tb.add_scalar(f"{record['kind']}/{key}", value, global_step=record["step"])

    def hparams(self, values: dict[str, Any]) -> None:
        """The run's settings (e.g. the resolved config as a dict) for TensorBoard's hparams view,
        which tabulates them beside ``HPARAM_METRICS``. Nothing without TensorBoard."""
        if self._tb is None:
            return
        from torch.utils.tensorboard.summary import hparams  # loaded with SummaryWriter above

        # What add_hparams writes, but into this run's own event file (add_hparams would start a
        # second run in a subfolder), and without the "session ended" record: the run has just begun.
        experiment, session_start, _ = hparams(flatten(values), dict.fromkeys(HPARAM_METRICS, 0.0))
        self._tb.file_writer.add_summary(experiment)
        self._tb.file_writer.add_summary(session_start)

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
        if self._tb is not None:
            self._tb.close()
            self._tb = None


