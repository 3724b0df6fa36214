"""Graceful preemption: the first SIGTERM or SIGINT finishes the current step, checkpoints and
exits with ``EXIT_PREEMPTED``; a second one exits at once.

SLURM (on preemption or at the time limit) and Kubernetes (on eviction) send SIGTERM and kill the
process after a grace period; Ctrl-C sends SIGINT. Stopping between two steps means the checkpoint
holds exactly the state the uninterrupted run had at that step, so ``wrn train --resume`` ends
with the same weights bit for bit. The engine asks ``requested()`` after every step (all
processes agree under torchrun, see ``dist.any_true``).
"""

from __future__ import annotations

import os
import signal
import threading

# EX_TEMPFAIL from sysexits.h ("try again later"): checkpointed and resumable, not a failure.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``wrn train`` exits EXIT_PREEMPTED."""

    exit_status = EXIT_PREEMPTED


class Guard:
    """Installs the handlers for the duration of a ``with`` block (main thread only: elsewhere,
    e.g. in a Ray worker thread, signals are left to their owner)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: the default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self) -> "Guard":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
