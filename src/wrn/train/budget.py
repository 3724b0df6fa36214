"""``--budget 15m``: the best model the machine can train in a fixed time.

This module is the arithmetic on measurements; ``train.run`` takes them. Before the first real
step the run times a few training steps and evaluation batches on its own model, data and accel
settings (compile warm-up included), puts the weights, BN statistics and optimizer back as they
were, and fixes its total number of steps (``choose_steps``) so that the whole schedule (warm-up and decay), the per-epoch evaluation and the final test evaluation end
within the budget. The decision is written into the run's config.yaml as ``train.steps``: a
resumed run, or a replay of that config, takes exactly the same steps and never decides again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from wrn.errors import UserError
from wrn.models.flops import model_size
from wrn.models.wide_resnet import WRN_NAME, parse_wrn
from wrn.train.config import Config
from wrn.train.validate import model_kwargs
from wrn.units import A_DAY_S, format_duration

WARMUP_STEPS = 3  # untimed: the first compiled step compiles, the next ones still settle
TIMED_STEPS = 16  # steps vary by ~10% on a shared 2-core VM: average over more of them
# ... unless they are slow: timing stops (never before MIN_TIMED_STEPS) once the timed steps took
# PROBE_FRACTION of the budget. A net far too slow for the budget, which the run will then narrow
# (quick's WRN-16-4 at ~1.8 s a step on an AVX2 guest), no longer spends ~30 s of 15 minutes on it.
MIN_TIMED_STEPS, PROBE_FRACTION = 4, 0.01
# Kept back for what the probe cannot see (checkpoint writes, the machine slowing down after it):
# a fraction plus seconds. A shared VM runs its first seconds fast: on two 2-core EPYC guests
# (Zen 2, Zen 3) training ran 12-15% below the probe's speed from a minute in, and the quick
# preset overran 15 minutes by 5-10% with a 3% and a 5% margin (BENCHMARKS.md). 12% covers both.
MARGIN_FRACTION, MARGIN_S = 0.12, 5.0


@dataclass(frozen=True)
class Probe:
    """What a few real steps cost on this machine."""
    step_s: float  # one training step
    eval_image_s: float  # evaluating one image
    checkpoint_s: float = 0.0  # writing one checkpoint (every epoch end; tiny epochs make it count)


def measure(train_step: Callable[[], None], eval_batch: Callable[[], int], *,
            clock: Callable[[], float] = time.perf_counter, max_s: float = math.inf,
            agree: Callable[[bool], bool] = lambda stop: stop) -> Probe:
    """Time ``train_step`` (one step, synchronised) and ``eval_batch`` (returns its image count).

    ``TIMED_STEPS`` steps, or fewer (at least ``MIN_TIMED_STEPS``) once they took ``max_s``.
    Under torchrun ``agree`` (any process's clock ran out) makes every process stop at the same
    step: the collectives must line up. The caller restores the model and optimizer afterwards.
    """
    for _ in range(WARMUP_STEPS):
        train_step()
    t0, n = clock(), 0
    while n < TIMED_STEPS:
        train_step()
        n += 1
        if n >= MIN_TIMED_STEPS and agree(clock() - t0 >= max_s):
            break
    step_s = (clock() - t0) / n
    eval_batch()  # warm-up (the compiled eval graph)
    t0 = clock()
    images = eval_batch()
    return Probe(step_s, (clock() - t0) / max(1, images))


def choose_steps(budget_s: float, elapsed_s: float, probe: Probe, *, steps_per_epoch: int,
                 eval_images_per_epoch: int, final_eval_images: int, checkpoint_every: int = 0) -> int:
    """The most training steps whose training, per-epoch evaluation and checkpoints (epoch ends,
    and every ``checkpoint_every`` steps) and final evaluation fit in what is left of
    ``budget_s`` after ``elapsed_s`` (start-up and the probe)."""
    final_s = final_eval_images * probe.eval_image_s
    epoch_end_s = eval_images_per_epoch * probe.eval_image_s + probe.checkpoint_s
    every_s = probe.checkpoint_s / checkpoint_every if checkpoint_every else 0.0
    left = budget_s - elapsed_s - final_s - MARGIN_FRACTION * budget_s - MARGIN_S

    def cost(n: int) -> float:
        return n * (probe.step_s + every_s) + math.ceil(n / steps_per_epoch) * epoch_end_s

    n = int(left / (probe.step_s + every_s + epoch_end_s / steps_per_epoch)) if left > 0 else 0
    while n > 0 and cost(n) > left:
        n -= 1
    if n < 1:
        # The fractional margin grows with the budget: the minimum named must pass this same test.
        need = (elapsed_s + final_s + cost(steps_per_epoch) + MARGIN_S) / (1 - MARGIN_FRACTION)
        raise UserError(f"train.time_budget: {format_duration(budget_s)} is too short: start-up took "
                        f"{format_duration(elapsed_s)} and one epoch needs ~{format_duration(cost(steps_per_epoch))}; "
                        f"give at least --budget {math.ceil(need / 60)}m, or a smaller model/dataset")
    return n


def narrower_model(cfg: Config, steps: int, steps_per_epoch: int) -> str | None:
    """The WRN to train instead when the budget gives the configured one fewer than
    ``train.budget_min_epochs`` epochs: the widest of the same depth, width halved down to 1,
    expected to get them. The expectation takes the step time as proportional to the forward FLOPs;
    narrow nets use a CPU less well than that, so it errs towards the wider net, and the caller
    probes the choice again (FLOP ratios hardly depend on the image size: 32x32 stands for any).
    ``None``: the configured model gets its epochs, or is no WRN."""
    wrn = parse_wrn(cfg.model.name)
    if wrn is None or steps >= cfg.train.budget_min_epochs * steps_per_epoch:
        return None
    depth, width = wrn

    def flops(name: str) -> int:
        return model_size(name, **model_kwargs(cfg))[1]

    configured, choice = flops(cfg.model.name), None
    while width > 1:
        width //= 2
        choice = WRN_NAME.format(depth=depth, width=width)
        if steps * configured / flops(choice) >= cfg.train.budget_min_epochs * steps_per_epoch:
            break
    return choice


def estimate_line(total_s: float) -> str:
    """The estimated wall time every run logs after warm-up, with advice when it is long."""
    line = f"estimated wall time {format_duration(total_s)}"
    if total_s > A_DAY_S:
        line += (" on this machine: for the best model in the time you have, add --budget (e.g. --budget 2h), "
                 "or train on a GPU")
    return line
