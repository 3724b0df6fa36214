"""``--budget 15m``: the best model the machine can train in a fixed time - the arithmetic.

The run times its own first training steps (``wrn.train.pace``) and fixes its total number of
steps so that the whole schedule (warm-up and decay), the per-epoch evaluation, the checkpoints and
the final test evaluation end within the budget, counted from the command's start. The decision is
written into the run's config.yaml as ``train.steps``: a resumed run, or a replay of that config,
takes exactly the same steps and never decides again. This module holds the arithmetic on those
measurements; ``pace`` drives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wrn.errors import UserError
from wrn.models.flops import model_size
from wrn.models.wide_resnet import WRN_NAME, parse_wrn
from wrn.train.config import Config
from wrn.train.validate import model_kwargs
from wrn.units import A_DAY_S, format_duration

# The window a budgeted run times its steps over: long enough to see the machine's steady speed
# (a shared VM runs its first seconds fast or slow: a 5-second probe timed 0.65 s a step where
# training then took 0.43 s, and fixed a 1-hour run from it), at most a tenth of the budget.
WINDOW_S, WINDOW_FRACTION, WINDOW_MAX_FRACTION = 60.0, 0.05, 0.10
# train.budget_min_epochs: whether the configured WRN is far too slow shows in a few seconds (a
# halving of the width is ~3.5x the FLOPs), so the run need not train it for the whole window.
NARROW_CHECK_S = 10.0
# Kept back for what the window cannot see (the machine slowing later, evaluation timed on one
# batch): a fraction plus seconds. Timed over a minute of training and counted from the command's
# start, the quick preset's 15 minutes ended at 90-100% (BENCHMARKS.md).
MARGIN_FRACTION, MARGIN_S = 0.04, 5.0


@dataclass(frozen=True)
class Costs:
    """What the run's own work costs on this machine, timed in its window."""
    step_s: float  # one training step
    eval_image_s: float  # evaluating one image
    checkpoint_s: float = 0.0  # writing one checkpoint (every epoch end; tiny epochs make it count)


def window_seconds(budget_s: float) -> float:
    """How long a budgeted run times its steps before choosing how many to take."""
    return min(max(WINDOW_S, WINDOW_FRACTION * budget_s), WINDOW_MAX_FRACTION * budget_s)


def steps_left(budget_s: float, elapsed_s: float, step_s: float) -> int:
    """Training steps alone that fit in what is left (a coarse count: the narrowing check)."""
    return max(0, int((budget_s * (1 - MARGIN_FRACTION) - MARGIN_S - elapsed_s) / step_s))


def cost_s(costs: Costs, done: int, total: int, steps_per_epoch: int, eval_images_per_epoch: int,
           final_eval_images: int, checkpoint_every: int = 0) -> float:
    """Seconds from step ``done`` to the end of a run of ``total`` steps: the steps with their
    mid-epoch checkpoints, each epoch end still to come (evaluation, checkpoint), the final test."""
    every_s = costs.checkpoint_s / checkpoint_every if checkpoint_every else 0.0
    epoch_ends = math.ceil(total / steps_per_epoch) - done // steps_per_epoch
    epoch_end_s = eval_images_per_epoch * costs.eval_image_s + costs.checkpoint_s
    return (total - done) * (costs.step_s + every_s) + epoch_ends * epoch_end_s + final_eval_images * costs.eval_image_s


def choose_steps(budget_s: float, elapsed_s: float, costs: Costs, *, steps_per_epoch: int,
                 eval_images_per_epoch: int, final_eval_images: int, checkpoint_every: int = 0,
                 done: int = 0) -> int:
    """The most training steps (``done`` already taken among them) whose training, per-epoch
    evaluation and checkpoints (epoch ends, and every ``checkpoint_every`` steps) and final
    evaluation fit in what is left of ``budget_s`` after ``elapsed_s``; at least ``done`` (a run
    already past its budget stops where it is)."""
    left = budget_s - elapsed_s - MARGIN_FRACTION * budget_s - MARGIN_S

    def cost(n: int) -> float:
        return cost_s(costs, done, n, steps_per_epoch, eval_images_per_epoch, final_eval_images, checkpoint_every)

    per_step = costs.step_s + (costs.checkpoint_s / checkpoint_every if checkpoint_every else 0.0)
    per_step += (eval_images_per_epoch * costs.eval_image_s + costs.checkpoint_s) / steps_per_epoch
    n = done + int(max(0.0, left) / per_step) + 1
    while n > done and cost(n) > left:
        n -= 1
    return n


def check_start(budget_s: float, elapsed_s: float) -> None:
    """Refuse, before the first step, a budget that start-up (data loading, model building) leaves
    no room to time the run in: nothing is written then."""
    if elapsed_s + MARGIN_S + window_seconds(budget_s) < budget_s * (1 - MARGIN_FRACTION):
        return
    need = (elapsed_s + MARGIN_S) / (1 - MARGIN_FRACTION - WINDOW_MAX_FRACTION) + 1  # the window is <= 10%
    raise UserError(f"train.time_budget: {format_duration(budget_s)} is too short: start-up took "
                    f"{format_duration(elapsed_s)} before the first step; give at least --budget "
                    f"{math.ceil(need / 60)}m, or a smaller model/dataset")


def narrowable(cfg: Config) -> bool:
    """Whether the configured model is a WRN a budget may narrow (``train.budget_min_epochs``)."""
    wrn = parse_wrn(cfg.model.name)
    return bool(cfg.train.budget_min_epochs) and wrn is not None and wrn[1] > 1


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
