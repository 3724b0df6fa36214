"""``--budget 15m``: the best model the machine can train in a fixed time.

Before the first real step the engine times a few training steps and evaluation batches on the
run's own model, data and accel settings (compile warm-up included), puts the weights, BN
statistics and optimizer back as they were, and fixes the run's total number of steps so that the
whole schedule (warm-up and decay), the per-epoch evaluation and the final test evaluation end
within the budget. The decision is written into the run's config.yaml as ``train.steps``: a
resumed run, or a replay of that config, takes exactly the same steps and never decides again.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable

from wrn.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
WARMUP_STEPS = 2  # untimed: the first compiled step compiles
TIMED_STEPS = 8
# Kept back for what the probe cannot see (checkpoint writes, noise): a fraction plus seconds.
MARGIN_FRACTION, MARGIN_S = 0.03, 5.0
A_DAY_S = 86400.0


def parse_duration(key: str, value) -> float:
    """Seconds from ``900``, ``90s``, ``15m``, ``2h``, ``1h30m`` or ``1d``; 0 = no budget."""
    if isinstance(value, bool):
        raise UserError(f"{key}={value!r} is not a duration: write e.g. 90s, 15m or 2h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise UserError(f"{key}={value!r} is not a duration: write e.g. 90s, 15m or 2h") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0 or seconds > 365 * A_DAY_S:
        raise UserError(f"{key}={value!r} is out of range: give 0 (no budget) up to a year, e.g. 15m")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= A_DAY_S:
        return f"{seconds / A_DAY_S:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class Probe:
    """What a few real steps cost on this machine."""
    step_s: float  # one training step
    eval_image_s: float  # evaluating one image


def measure(train_step: Callable[[], None], eval_batch: Callable[[], int], *,
            clock: Callable[[], float] = time.perf_counter) -> Probe:
    """Time ``train_step`` (one step, synchronised) and ``eval_batch`` (returns its image count).

    The caller restores the model and optimizer afterwards. Under torchrun every process runs
    the same fixed number of steps (no time-based loop: the collectives must line up).
    """
    for _ in range(WARMUP_STEPS):
        train_step()
    t0 = clock()
    for _ in range(TIMED_STEPS):
        train_step()
    step_s = (clock() - t0) / TIMED_STEPS
    eval_batch()  # warm-up (the compiled eval graph)
    t0 = clock()
    images = eval_batch()
    return Probe(step_s, (clock() - t0) / max(1, images))


def choose_steps(budget_s: float, elapsed_s: float, probe: Probe, *, steps_per_epoch: int,
                 eval_images_per_epoch: int, final_eval_images: int) -> int:
    """The most training steps whose training, per-epoch evaluation and final evaluation fit in
    what is left of ``budget_s`` after ``elapsed_s`` (start-up and the probe)."""
    final_s = final_eval_images * probe.eval_image_s
    epoch_eval_s = eval_images_per_epoch * probe.eval_image_s
    left = budget_s - elapsed_s - final_s - MARGIN_FRACTION * budget_s - MARGIN_S

    def cost(n: int) -> float:
        return n * probe.step_s + math.ceil(n / steps_per_epoch) * epoch_eval_s

    n = int(left / (probe.step_s + epoch_eval_s / steps_per_epoch)) if left > 0 else 0
    while n > 0 and cost(n) > left:
        n -= 1
    if n < 1:
        # The fractional margin grows with the budget: the minimum named must pass this same test.
        need = (elapsed_s + final_s + cost(steps_per_epoch) + MARGIN_S) / (1 - MARGIN_FRACTION)
        raise UserError(f"train.time_budget: {format_duration(budget_s)} is too short: start-up took "
                        f"{format_duration(elapsed_s)} and one epoch needs ~{format_duration(cost(steps_per_epoch))}; "
                        f"give at least --budget {math.ceil(need / 60)}m, or a smaller model/dataset")
    return n


def estimate_line(total_s: float) -> str:
    """The estimated wall time every run logs after warm-up, with advice when it is long."""
    line = f"estimated wall time {format_duration(total_s)}"
    if total_s > A_DAY_S:
        line += (" on this machine: for the best model in the time you have, add --budget (e.g. --budget 2h), "
                 "or train on a GPU")
    return line
