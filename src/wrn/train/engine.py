"""The training loop: plain functions ``train_one_epoch``, ``evaluate`` and ``fit``.

    summary = fit(load_config("quick", overrides=["data.path=cifar10.tar.xz"]), "runs/q")

Everything random is a pure function of (seed, global step): the data order comes from the
loader's (seed, epoch) permutation, and before each step the augmentation generator and torch's
global RNG (dropout, stochastic depth) are seeded from (seed, step, rank). So a run resumed from a
mid-epoch checkpoint takes exactly the steps the uninterrupted run took, and ends with the same
weights bit for bit on CPU. (RNG states are saved in the checkpoint too, for anything else.)
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn import rundir
from wrn.train import accel, checkpoint, dist, preempt
from wrn.train.config import EVAL_KEYS, Config, apply_overrides, config_from_dict, validate
from wrn.train.data import build_data, find_whitening, num_images, other_data
from wrn.train.numerics import EpochSums, NonFiniteLoss, step_seed  # noqa: F401 - NonFiniteLoss is fit's error
from wrn.train.optim import set_lr
from wrn.train.pace import Narrow
from wrn.train.provenance import provenance
from wrn.train.run import RunState, build_run, narrow, start_run
from wrn.train.step import make_eval_step
from wrn.units import format_duration


def _all_ranks(sums: EpochSums) -> EpochSums:
    """The sums over every process under torchrun (a collective: all processes call it)."""
    loss, correct, count = dist.all_sum(sums.loss, sums.correct, sums.count)
    return EpochSums(loss, correct, count, sums.bad_step)


def _check_finite(run: RunState, sums: EpochSums) -> None:
    bad = dist.first_bad_step(sums.bad_step)  # the same answer on every process: all stop together
    if bad >= 0:
        spe = len(run.loaders["train"])
        where = run.out_dir / checkpoint.CHECKPOINT
        kept = f"the last good checkpoint is kept in {where}" if where.exists() else "no checkpoint was written yet"
        run.log.write({"kind": "error", "step": bad, "epoch": bad // spe, "error": "non-finite loss"})
        raise NonFiniteLoss(f"loss became NaN/inf at step {bad} (epoch {bad // spe + 1}): training stopped and "
                            f"{kept}; lower optim.lr, or set train.skip_nonfinite=true to skip such batches")


def _save(run: RunState, step: int, sums: EpochSums | None, metrics: dict[str, Any] | None) -> None:
    # Collectives before rank 0 alone writes: all processes' sums and averaged BN statistics.
    sums = _all_ranks(sums) if sums is not None else None
    dist.average_buffers(run.model)
    if run.ema is not None:  # each process averaged its own BN statistics: linear, so average those too
        dist.average_buffers(run.ema.module)
    spe = len(run.loaders["train"])
    # An inf/NaN gradient can leave the loss finite for one more step but the weights broken:
    # never let such weights replace the last good checkpoint (one host sync per checkpoint;
    # every process checks its identical copy, so all stop together).
    params = [p.detach() for p in checkpoint.unwrap(run.model).parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        run.log.write({"kind": "error", "step": step, "epoch": step // spe, "error": "non-finite weights"})
        where = run.out_dir / checkpoint.CHECKPOINT
        kept = f"the last good checkpoint is kept in {where}" if where.exists() else "no checkpoint was written yet"
        raise NonFiniteLoss(f"weights became NaN/inf by step {step} (epoch {step // spe + 1}): training stopped and "
                            f"{kept}; lower optim.lr, or set train.skip_nonfinite=true to skip such batches")
    if not run.is_main:
        return
    state = {"epoch": step // spe, "step": step, "steps_per_epoch": spe, "config": run.cfg.to_dict(),
             "model_args": checkpoint.unwrap(run.model).model_args, "partial": sums.to_json() if sums else None,
             "metrics": metrics, "elapsed_s": run.elapsed(), "decisions": run.decisions, **run.extra_state}
    if run.ema is not None:
        state["ema_updates"] = int(run.ema.n_averaged)  # 0: the next update copies the weights
    checkpoint.save_checkpoint(run.out_dir, model=run.model, optimizer=run.optimizer, state=state,
                               averaged=run.ema.module if run.ema is not None else None)


def train_one_epoch(run: RunState, epoch: int, start_step: int = 0, sums: EpochSums | None = None,
                    stop_step: int | None = None) -> EpochSums:
    """Train ``epoch`` from batch ``start_step`` up to ``stop_step`` (default: the whole epoch; a
    budgeted run may end mid-epoch); returns the epoch's running sums."""
    cfg = run.cfg
    loader = run.loaders["train"]
    spe = len(loader)
    stop = spe if stop_step is None else stop_step
    sums = sums or EpochSums.zeros(run.device)
    window = EpochSums.zeros(run.device)  # since the last "step" line
    window_start = time.perf_counter()
    run.model.train()
    bar = run.log.progress(stop, start_step, f"epoch {epoch + 1}/{math.ceil(run.total_steps / spe)}")
    for i, (images, labels) in enumerate(loader.epoch(epoch, start_step), start=start_step):
        if i >= stop:
            break
        step = epoch * spe + i  # the global step being taken
        lr = run.schedule(step)
        set_lr(run.optimizer, lr)
        torch.manual_seed(step_seed(cfg.train.seed, step, run.rank, 0))  # dropout, drop-path
        run.generator.manual_seed(step_seed(cfg.train.seed, step, run.rank, 1))  # crop, flip, policy, cutout
        x = run.augment(images, run.generator)  # [B, 3, H, W] float32, normalised, in the model's memory format
        if run.skipper is not None:
            run.skipper.remember()
        loss_sum, correct = run.train_step(x, labels)
        finite = torch.isfinite(loss_sum)
        for s in (sums, window):
            s.loss += torch.where(finite, loss_sum, torch.zeros_like(loss_sum))
            s.correct += correct
            s.count += labels.numel()
        if not cfg.train.skip_nonfinite:
            sums.bad_step = torch.where(~finite & (sums.bad_step < 0), step, sums.bad_step)
        done = step + 1
        bar.update(1)
        run.pace.after_step(done, loss_sum)  # a budget may fix the run's length here
        stop = min(stop, run.total_steps - epoch * spe)
        if done % cfg.log.every_steps == 0:
            _check_finite(run, sums)
            window = _all_ranks(window)
            now = time.perf_counter()
            loss = window.loss.item() / max(1, window.count)
            record = {"kind": "step", "epoch": epoch, "step": done, "loss": loss, "lr": lr,
                      "img_per_s": window.count / max(1e-9, now - window_start), "elapsed_s": run.elapsed()}
            if run.skipper is not None:
                record["skipped"] = run.skipper.skipped
            run.log.write(record)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
            window, window_start = EpochSums.zeros(run.device), now
        last = i + 1 == stop  # covered by the epoch-end checkpoint (written after evaluation)
        if dist.any_true(run.guard.requested(), run.device) and not last:
            _check_finite(run, sums)
            _save(run, done, sums, None)
            _preempted(run, done)
        every = cfg.train.checkpoint_every
        if every and done % every == 0 and not last:
            _check_finite(run, sums)
            _save(run, done, sums, None)
    bar.close()
    _check_finite(run, sums)
    return sums


def _preempted(run: RunState, step: int) -> None:
    run.log.write({"kind": "preempted", "step": step, "signal": run.guard.name, "elapsed_s": run.elapsed()})
    raise preempt.Preempted(f"stopped by {run.guard.name or 'a signal'} after step {step}: a checkpoint was written; "
                            f"continue with `wrn train --resume {run.out_dir}`, or run the same command again (with --out)")


@torch.no_grad()
def evaluate(model: nn.Module, eval_step: Callable, loader, augment) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``loader``'s split (this process's shard under
    torchrun), without training's augmentation (``eval_step`` may average over a flip: accel's
    ``flip``); one host sync at the end."""
    dist.average_buffers(model)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    n = 0
    for images, labels in loader.epoch(0):
        logits = eval_step(augment.normalize(images))  # in the model's memory format
        loss = loss.to(logits.device) + F.cross_entropy(logits, labels, reduction="sum").double()
        correct = correct.to(logits.device) + (logits.argmax(1) == labels).sum()
        n += labels.numel()
    loss, correct, n = dist.all_sum(loss, correct, n)
    model.train(was_training)
    if n == 0:
        return float("nan"), float("nan")
    return loss.item() / n, correct.item() / n


def evaluate_checkpoint(checkpoint_path: str | Path, *, data: str | None = None, split: str = "test",
                        overrides: list[str] | tuple[str, ...] = (), tta: bool | None = None,
                        weights: str | None = None) -> dict:
    """Rebuild the model from the checkpoint and evaluate it the way training did (same
    normalisation statistics and precision unless overridden). On the run's own data the split
    is the run's own (its val split is carved again from the same seed); ``data`` evaluates
    another dataset with the run's classes, where training-only settings (subset, val split) do
    not apply. ``tta`` (flip test-time augmentation) defaults to the run's train.eval_tta.
    ``weights``: ema | raw (``checkpoint.load_checkpoint``; default: the moving average where the
    run kept one)."""
    ckpt = checkpoint.find_checkpoint(checkpoint_path)
    model, state = checkpoint.load_checkpoint(ckpt, weights=weights)
    cfg = config_from_dict(state["config"])
    apply_overrides(cfg, overrides, EVAL_KEYS, refuse=lambda key, _: (
        f"{key} does not apply to evaluation (the checkpoint fixes it): use accel.* or train.eval_batch_size"))
    if tta is not None:
        cfg.train.eval_tta = tta
    validate(cfg)
    device = accel.resolve_device(cfg.accel.device)
    norm = state.get("normalize")
    stats = (norm["mean"], norm["std"]) if norm and norm.get("mean") else None
    whitening = find_whitening(cfg, ckpt)
    if data is None:
        loader, augment = build_data(cfg, device, splits=(split,), stats=stats, whitening=whitening).pick(split)
    else:
        loader, augment = other_data(cfg, data, split, state.get("classes"), device, stats, whitening)
    model = accel.prepare_model(model, device, cfg.accel.channels_last)
    precision = accel.resolve_precision(cfg.accel.precision, device, (state.get("decisions") or {}).get("precision"))
    eval_step = make_eval_step(model, precision=precision, device=device, flip=cfg.train.eval_tta)
    loss, acc = evaluate(model, eval_step, loader, augment)
    return {"checkpoint": str(ckpt), "data": data or cfg.source(), "split": split, "images": num_images(loader),
            "accuracy": acc, "loss": loss, "step": state.get("step"), "model": state["model_args"]["name"],
            "precision": precision, "tta": cfg.train.eval_tta, "device": str(device), "weights": state["weights"]}


def _evaluate(run: RunState, split: str, raw: bool = False) -> tuple[float, float]:
    """Loss and accuracy of the evaluated weights (the moving average when the run keeps one;
    ``raw``: the trained weights themselves)."""
    if run.ema is None or raw:
        return evaluate(run.model, run.eval_step_raw or run.eval_step, run.loaders[split], run.augment)
    return evaluate(run.ema.module, run.eval_step, run.loaders[split], run.augment)


# -- fit -------------------------------------------------------------------------------------------

def _model_summary_args(model: nn.Module) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in checkpoint.unwrap(model).model_args.items()}


def _train(run: RunState, start: int, state: dict | None) -> dict[str, Any]:
    """The epoch loop from ``start``; returns the last epoch's metrics."""
    cfg, loaders = run.cfg, run.loaders
    spe = len(loaders["train"])
    world_size = dist.world()[1]
    metrics: dict[str, Any] = (state or {}).get("metrics") or {}
    # The saved partial sums cover all processes: rank 0 carries them on, the others start at zero.
    sums = EpochSums.from_json(state["partial"], run.device) if state and state.get("partial") and run.is_main else None
    epoch = start // spe
    while epoch * spe < run.total_steps:  # a budget fixes total_steps during the first steps
        first = start % spe if epoch == start // spe else 0
        stop = min(spe, run.total_steps - epoch * spe)
        t0 = time.perf_counter()
        sums = _all_ranks(train_one_epoch(run, epoch, first, sums, stop))
        stop = min(spe, run.total_steps - epoch * spe)
        train_loss = sums.loss.item() / sums.count
        train_acc = sums.correct.item() / sums.count
        epoch_time = time.perf_counter() - t0  # train only; .item() above waited for the device
        trained = (stop - first) * (cfg.train.batch_size // world_size) * world_size
        end = epoch * spe + stop
        metrics = {"kind": "epoch", "epoch": epoch, "step": end, "lr": run.schedule(end - 1),
                   "train_loss": train_loss, "train_acc": train_acc, "val_loss": None, "val_acc": None}
        if "val" in loaders:
            metrics["val_loss"], metrics["val_acc"] = _evaluate(run, "val")
        if cfg.log.test_every_epoch:
            _, metrics["test_acc"] = _evaluate(run, "test")  # learning curves only; never used for choices
        metrics.update(epoch_time_s=epoch_time, img_per_s=trained / max(epoch_time, 1e-9), elapsed_s=run.elapsed())
        if run.skipper is not None:
            metrics["skipped"] = run.skipper.skipped
        run.log.write(metrics)
        run.log.epoch_line(metrics, math.ceil(run.total_steps / spe))
        _save(run, end, None, metrics)
        if run.is_main and cfg.train.keep_every and (epoch + 1) % cfg.train.keep_every == 0:
            checkpoint.keep_copy(run.out_dir, epoch + 1)
        sums = None
        if end < run.total_steps and dist.any_true(run.guard.requested(), run.device):
            _preempted(run, end)
        epoch += 1
    return metrics


def _finish(run: RunState, metrics: dict[str, Any]) -> dict[str, Any]:
    """Final-epoch test accuracy (never the best epoch's) -> log, summary.json."""
    cfg, out_dir = run.cfg, run.out_dir
    test_loss, test_acc = _evaluate(run, "test")
    # With train.ema the summary's accuracy is the moving average's; the trained weights' beside it.
    raw_loss, raw_acc = _evaluate(run, "test", raw=True) if run.ema is not None else (test_loss, test_acc)
    epoch_time_s, img_per_s = rundir.epoch_means(out_dir) if run.is_main else (None, None)
    spe = len(run.loaders["train"])
    summary = {"model": cfg.model.name, "model_args": _model_summary_args(run.model), "dataset": cfg.data.name,
               "data_source": cfg.source(), "normalize": cfg.data.normalize, "params": sum(p.numel() for p in run.model.parameters()),
               "epochs": round(run.total_steps / spe, 4), "steps": run.total_steps,
               "time_budget_s": cfg.train.time_budget or None, "budget_steps": run.decisions.get("budget_steps"),
               "configured_model": run.decisions.get("configured_model"),
               "test_acc": test_acc, "test_loss": test_loss, "test_images": num_images(run.loaders["test"]), "eval_tta": cfg.train.eval_tta, "val_acc": metrics.get("val_acc"),
               "val_loss": metrics.get("val_loss"), "train_acc": metrics.get("train_acc"),
               "train_loss": metrics.get("train_loss"), "wall_time_s": run.elapsed(),
               "epoch_time_s": epoch_time_s, "img_per_s": img_per_s, "device": str(run.device),
               "precision": run.decisions["precision"], "compile": run.decisions["compile"],
               # Equal only for bit-identical final weights: two runs (another machine, a resume)
               # can be compared from their summaries, without keeping checkpoints.
               "weights_sha256": dist.state_checksum(run.model), "finished": True,
               "weights": "ema" if run.ema is not None else "raw", "test_acc_raw": raw_acc, "test_loss_raw": raw_loss,
               "ema_sha256": dist.state_checksum(run.ema.module) if run.ema is not None else None,
               # where it ran: CPU/ISA, threads, torch, wrn, git commit, command line
               "provenance": provenance(run.command)}
    replicas = dist.replica_report(summary["weights_sha256"])  # torchrun: every process's checksum
    if run.is_main:
        run.log.write({"kind": "end", "step": run.total_steps, "test_loss": test_loss, "test_acc": test_acc,
                       "elapsed_s": run.elapsed(), **replicas})
        rundir.write_summary(out_dir, summary)
    budget_note = f" of a {format_duration(cfg.train.time_budget)} budget" if cfg.train.time_budget else ""
    tta = ", flip TTA" if cfg.train.eval_tta else ""
    run.log.info(f"test accuracy {100 * test_acc:.2f}% (final epoch{tta}) | wall time {run.elapsed():.0f}s{budget_note}"
                 f" | {out_dir}")
    return summary


@dist.with_process_group
def fit(cfg: Config, out_dir: str | Path, *, resume: bool = False, quiet: bool = False,
        command: str | None = None, started: float | None = None, auto: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir`` (config.yaml, log.jsonl, checkpoint/, summary.json).

    With ``resume=True`` it continues from the newest complete checkpoint in ``out_dir`` (or starts
    over there if the run was killed before its first checkpoint); ``auto`` goes into its resume
    record (``wrn train --out DIR`` run again: ``restart.plan``). Returns summary.json's content.
    The first SIGTERM/SIGINT checkpoints and raises ``preempt.Preempted`` (see wrn.train.preempt).
    A fresh run that fails before its first step leaves no run directory behind. ``command`` is
    the command line recorded as the run's provenance (default: this process's ``sys.argv``);
    ``started`` the ``time.perf_counter()`` of the command's start, from which the wall time and a
    budget count (default: now; data loading and model building are always counted).
    """
    t_fit = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    quiet = quiet or cfg.log.quiet
    summary = rundir.read_summary(out_dir) if resume else None
    if summary:
        if dist.is_main() and not quiet:
            print(f"wrn: {out_dir} already finished (test accuracy {100 * summary['test_acc']:.2f}%)")
        return summary
    # What this run creates: out_dir and any parents that were missing (e.g. runs/ itself).
    created = [d for d in (out_dir.absolute(), *out_dir.absolute().parents) if not d.exists()]
    run, training = None, False
    try:
        with preempt.Guard() as guard:
            run, state = build_run(cfg, out_dir, resume, quiet, t_fit, command)
            run.guard, run.resume_info = guard, auto or {}
            start = start_run(run, state)
            training = True  # from here on a failure (NaN at step 3) keeps the log that explains it
            while True:
                try:
                    metrics = _train(run, start, state)
                    break
                except Narrow as e:  # the budget gives the configured WRN too few epochs
                    start, state = narrow(run, e.model, e.configured_epochs), None
            return _finish(run, metrics)
    except BaseException:
        if created and not training and dist.is_main() and not (out_dir / checkpoint.CHECKPOINT).exists():
            shutil.rmtree(out_dir, ignore_errors=True)  # failed before its first step: leave nothing
            for parent in created[1:]:  # rmdir: only while empty (another run may have started there)
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise
    finally:
        if run is not None and run.log is not None:
            run.log.close()
