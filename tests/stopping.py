"""Stopping a run at a chosen step and comparing runs: shared by test_trust, test_budget and
test_preempt. ``stop_at`` sends the process a real signal from inside training, so the engine's
own SIGTERM/SIGINT path (finish the step, checkpoint, exit) stops it exactly after that step."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file

from wrn.train.optim import Schedule


def stop_at(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Signal this process just before global step ``step - 1`` trains: the run checkpoints at
    ``step`` and raises ``preempt.Preempted`` (the engine asks the schedule for every step's lr)."""
    call = Schedule.__call__
    fired = []

    def lr(self, s: int) -> float:
        if s == step - 1 and not fired:
            fired.append(s)
            os.kill(os.getpid(), signum)
        return call(self, s)

    monkeypatch.setattr(Schedule, "__call__", lr)


def records(run: Path, kind: str | None = None) -> list[dict]:
    lines = (Path(run) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["kind"] == kind]


def resumed_from(run: Path) -> int | None:
    """The step the run's log says it resumed from (None: it never resumed)."""
    found = records(run, "resume")
    return found[-1]["step"] if found else None


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(run) / "checkpoint" / "model.safetensors")


def differing(run: Path, ref: Path) -> list[str]:
    """Names of the tensors of model.safetensors that are not bit-identical (all, if keys differ)."""
    a, b = weights(run), weights(ref)
    if a.keys() != b.keys():
        return sorted(a.keys() | b.keys())
    return [k for k in a if not torch.equal(a[k], b[k])]
