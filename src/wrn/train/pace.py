"""A run's pace, timed from its own training steps: the wall-time estimate every run logs, and
the decision a budget makes (``train.time_budget``).

A budgeted run does not time a separate probe: it trains, and times its own steps over a window
in which nothing it computes depends on the total it is about to choose - the lr warm-up, whose
length is fixed in steps before the first step (``optim.warmup_steps``, written into config.yaml),
or, for a schedule without warm-up, the steps before its first lr change. The window starts after
``SETTLE_STEPS`` (compilation, allocator warm-up) and lasts ``budget.window_seconds`` (a minute,
or a few percent of the budget), long enough to see the machine's steady speed. At its end the run
times an evaluation batch and a checkpoint write, fixes ``train.steps`` (config.yaml) and goes on:
the steps already taken are the first steps of the run it chose, so a resume or a replay of that
config.yaml computes the same weights. With ``train.budget_min_epochs`` the run first checks, after
``budget.NARROW_CHECK_S`` of timed steps, whether the configured WRN gets that many epochs; if not it
starts over from step 0 with a narrower one (its steps so far are discarded, their time counted).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import TYPE_CHECKING

import torch

from wrn.errors import UserError
from wrn.fsio import write_atomic
from wrn.train import budget, checkpoint, dist
from wrn.train.data import num_images
from wrn.train.optim import Schedule, scaled
from wrn.units import format_duration

if TYPE_CHECKING:
    from wrn.train.run import RunState

SETTLE_STEPS = 3  # untimed: the first compiled step compiles, the next ones still settle
# An unbudgeted run's estimate: after its first timed step or this much training, whichever is
# later (a WRN-28-10 step on a laptop CPU takes ~13 s: it says "twelve days" within a minute) ...
FIRST_ESTIMATE_S = 30.0
ESTIMATE_GROWTH = 4.0  # ... then refined at 4x the training time so far (2 min, 8 min, 32 min, ...)


class Narrow(Exception):
    """The configured WRN gets too few epochs in the budget: start over with ``model``."""

    def __init__(self, model: str, configured_epochs: float):
        super().__init__(model)
        self.model, self.configured_epochs = model, configured_epochs


def window_limit(run: RunState) -> int:
    """The last step the budget may time: the end of the warm-up, or (none) the step before the
    schedule's first lr change, beyond which the lr would depend on the total not yet chosen."""
    warm = run.cfg.optim.warmup_steps
    if warm:
        return warm
    lrs = run.schedule
    first = next((s for s in range(1, run.total_steps) if lrs(s) != lrs(0)), run.total_steps)
    return first


class Pace:
    """Called after every training step (``after_step``): times the run's steps from its own
    training; an unbudgeted run logs its estimated wall time, a budgeted one decides its length."""

    def __init__(self, run: RunState, start: int):
        cfg = run.cfg
        self.run, self.clock = run, time.perf_counter
        self.deciding = bool(cfg.train.time_budget) and not cfg.train.steps
        self.estimating = not cfg.train.time_budget  # a budgeted run's estimate is its budget's choice
        self.limit = window_limit(run) if self.deciding else run.total_steps
        # A resume close to the window's end times from its first step (compile included: slower,
        # so the choice errs short) rather than not at all.
        settle = SETTLE_STEPS if self.limit - start > 2 * SETTLE_STEPS else 0
        self.mark = start + settle
        self.t0 = self.clock() if settle == 0 else 0.0
        self.train_start = self.clock()
        self.next_estimate_s = FIRST_ESTIMATE_S
        spe = len(run.loaders["train"])
        wrn = budget.narrowable(cfg)
        self.narrow_check = self.deciding and wrn and cfg.train.budget_min_epochs * spe > 0
        self.window_s = budget.window_seconds(cfg.train.time_budget) if self.deciding else 0.0

    def step_s(self, done: int, now: float) -> float:
        return (now - self.t0) / max(1, done - self.mark)

    def after_step(self, done: int, loss: torch.Tensor) -> None:
        if done < self.mark:
            return
        if done == self.mark:
            loss.item()  # wait for the device: the window starts with the step done
            self.t0 = self.clock()
            return
        now = self.clock()
        if self.deciding:
            window_ends = now - self.t0 >= self.window_s or done >= self.limit
            if self.narrow_check and dist.any_true(now - self.t0 >= budget.NARROW_CHECK_S or window_ends,
                                                   self.run.device):
                self.narrow_check = False  # once, at the latest where the window ends
                loss.item()
                self._maybe_narrow(done, self.step_s(done, self.clock()))
            if dist.any_true(window_ends, self.run.device):
                loss.item()
                self._decide(done, self.step_s(done, self.clock()))
        elif self.estimating and self.run.total_steps > done and now - self.train_start >= self.next_estimate_s:
            loss.item()
            now = self.clock()
            step_s = self.step_s(done, now)
            self.next_estimate_s = ESTIMATE_GROWTH * (now - self.train_start)
            log_estimate(self.run, self.run.elapsed() + (self.run.total_steps - done) * step_s, step_s)

    def _maybe_narrow(self, done: int, step_s: float) -> None:
        run, cfg = self.run, self.run.cfg
        spe = len(run.loaders["train"])
        steps = done + budget.steps_left(cfg.train.time_budget, run.elapsed(), step_s)
        steps = dist.broadcast_int(steps, run.device)
        model = budget.narrower_model(cfg, steps, spe)
        if model:
            raise Narrow(model, steps / spe)

    def _decide(self, done: int, step_s: float) -> None:
        run, cfg = self.run, self.run.cfg
        spe = len(run.loaders["train"])
        world_size = dist.world()[1]
        costs = budget.Costs(step_s, _eval_image_s(run), _checkpoint_s(run))
        per_epoch = num_images(run.loaders["val"]) // world_size if "val" in run.loaders else 0
        # With train.ema the final test evaluates the average and the trained weights.
        final = num_images(run.loaders["test"]) // world_size * (2 if run.ema is not None else 1)
        steps = budget.choose_steps(cfg.train.time_budget, run.elapsed(), costs, done=done, steps_per_epoch=spe,
                                    eval_images_per_epoch=per_epoch, final_eval_images=final,
                                    checkpoint_every=cfg.train.checkpoint_every)
        steps = dist.broadcast_int(steps, run.device)
        schedule = Schedule(cfg.optim, scaled(cfg.optim, cfg.train.batch_size, cfg.train.epochs), spe,
                            cfg.train.epochs, total_steps=steps)
        changed = next((s for s in range(done) if schedule(s) != run.schedule(s)), None)
        if changed is not None:  # the steps taken would not be the chosen run's: never silently
            raise UserError(f"train.time_budget: the chosen {steps} steps move the lr of step {changed}, already "
                            "taken: give a longer budget, or a warm-up (optim.warmup_epochs)")
        run.cfg = cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
        run.total_steps, run.schedule = steps, schedule
        run.decisions["budget_steps"] = steps
        self.deciding = False
        if run.is_main:  # the choice, before the next step: resume and replay take it as it is
            write_atomic(run.out_dir / "config.yaml", cfg.to_yaml().encode())
        run.log.write({"kind": "budget", "step": done, "steps": steps, "window_steps": done - self.mark,
                       "step_s": step_s, "eval_image_s": costs.eval_image_s, "checkpoint_s": costs.checkpoint_s,
                       "elapsed_s": run.elapsed()})
        run.log.info(f"budget {format_duration(cfg.train.time_budget)}: {step_s:.3g} s a step over "
                     f"{done - self.mark} steps -> train.steps={steps} ({steps / spe:.3g} epochs)")
        log_estimate(run, run.elapsed() + budget.cost_s(costs, done, steps, spe, per_epoch, final,
                                                        cfg.train.checkpoint_every), step_s)


def _eval_image_s(run: RunState) -> float:
    """Seconds to evaluate one test image as the run evaluates (flip TTA included): one batch to
    warm up (a compiled eval step compiles here), one timed. Evaluation changes no state."""
    model = run.eval_model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batches = iter(run.loaders["test"].epoch(0))
            times = []
            for _ in range(2):
                try:
                    images, _ = next(batches)
                except StopIteration:
                    break
                t0 = time.perf_counter()
                run.eval_step(run.augment.normalize(images)).sum().item()
                times.append((time.perf_counter() - t0) / len(images))
    finally:
        model.train(was_training)
    return times[-1] if times else 0.0


def _checkpoint_s(run: RunState) -> float:
    """Seconds to write one checkpoint (rank 0 writes them), timed on a scratch copy."""
    if not run.is_main:
        return 0.0
    scratch = run.out_dir / ".budget-probe"
    t0 = time.perf_counter()
    checkpoint.save_checkpoint(scratch, model=run.model, optimizer=run.optimizer, state={"probe": True},
                               averaged=run.ema.module if run.ema is not None else None)
    seconds = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def log_estimate(run: RunState, total_s: float, step_s: float) -> None:
    run.log.write({"kind": "estimate", "wall_s": total_s, "step_s": step_s, "elapsed_s": run.elapsed()})
    run.log.info(budget.estimate_line(total_s))
