"""Setting up a run for ``engine.fit``: ``RunState`` (what is built once and the loop uses),
``build_run`` (data, model, optimizer, the recorded decisions, the restored checkpoint) and
``start_run`` (config.yaml, the start record) and ``narrow`` (a budget's start-over with a
narrower WRN; the budget's timing itself is ``pace``)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from wrn import rundir
from wrn.data import zca
from wrn.errors import UserError
from wrn.fsio import write_atomic
from wrn.models import create_model
from wrn.train import accel, budget, checkpoint, dist, finetune, preempt, step
from wrn.train.config import Config
from wrn.train.data import ZCA_FILE, build_data, find_whitening
from wrn.train.log import RunLog
from wrn.train.numerics import SkipNonFinite
from wrn.train.optim import Schedule, build_optimizer, scaled
from wrn.train.pace import Pace
from wrn.train.provenance import provenance
from wrn.train.validate import model_kwargs
from wrn.units import format_duration


@dataclass
class RunState:
    """What ``fit`` builds once and the epoch functions use."""
    cfg: Config
    out_dir: Path
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_step: Callable
    eval_step: Callable  # evaluates the moving average when the run keeps one (train.ema), else the model
    schedule: Schedule
    augment: Any
    loaders: dict[str, Any]
    log: RunLog | None
    rank: int = 0
    is_main: bool = True
    generator: torch.Generator | None = None
    skipper: SkipNonFinite | None = None
    total_steps: int = 0
    train_images: int = 0
    quiet: bool = False
    whitening: zca.Whitening | None = None
    # Choices that shape the computation (compile, the steps a budget allowed): made once, from
    # the config, saved in every checkpoint and reused on resume.
    decisions: dict[str, Any] = field(default_factory=dict)
    extra_state: dict[str, Any] = field(default_factory=dict)  # saved with each checkpoint
    guard: preempt.Guard = field(default_factory=preempt.Guard)
    pace: Pace | None = None  # times the steps: the wall-time estimate, the budget's decision
    start_time: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0  # seconds spent before a resume
    command: str | None = None  # the command line recorded as provenance (None: sys.argv)
    resume_info: dict[str, Any] = field(default_factory=dict)  # in the resume record, e.g. {"auto": True}
    ema: AveragedModel | None = None  # train.ema: the moving average of the weights (ema.module)
    eval_step_raw: Callable | None = None  # with ema: evaluates the trained weights themselves

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    @property
    def eval_model(self) -> nn.Module:
        """The network ``eval_step`` evaluates: the moving average when the run keeps one."""
        return self.ema.module if self.ema is not None else self.model


def _model_and_optimizer(cfg: Config, device: torch.device, num_classes: int, inherited: dict | None = None):
    """The model (seeded: the same initial weights on every rank and every replay), its training
    wrapper (DDP under torchrun), the optimizer and the non-finite skipper. ``inherited``: a
    fine-tuning source's constructor arguments that no config key states."""
    torch.manual_seed(cfg.train.seed)  # the initial weights
    model = create_model(cfg.model.name, **model_kwargs(cfg, num_classes), **(inherited or {}))
    model = accel.prepare_model(model, device, cfg.accel.channels_last)
    train_model = dist.wrap_model(model, device, sync_bn=cfg.accel.sync_bn)
    optimizer = build_optimizer(model, cfg.optim, scaled(cfg.optim, cfg.train.batch_size, cfg.train.epochs))
    skipper = SkipNonFinite(optimizer, model) if cfg.train.skip_nonfinite else None
    return model, train_model, optimizer, skipper


def _steps(cfg: Config, model: nn.Module, train_model: nn.Module, optimizer, device: torch.device,
           decisions: dict[str, Any], ema: AveragedModel | None) -> tuple[Callable, Callable, Callable | None]:
    """The training step and the evaluation steps (of the moving average when there is one, and
    of the trained weights), compiled and in the precision the decisions say."""
    a, o = cfg.accel, cfg.optim
    train_step = step.make_train_step(train_model, optimizer, precision=decisions["precision"], device=device,
                                       compile=decisions["compile"], label_smoothing=o.label_smoothing,
                                       compile_mode=a.compile_mode, cuda_graphs=a.cuda_graphs,
                                       fused_optimizer=a.fused_optimizer, threads=a.threads, sam_rho=o.sam_rho,
                                       sam_adaptive=o.sam_adaptive, ema=ema)

    def eval_step(net: nn.Module) -> Callable:
        return step.make_eval_step(net, precision=decisions["precision"], device=device, compile=decisions["compile"],
                                   compile_mode=a.compile_mode, cuda_graphs=a.cuda_graphs, flip=cfg.train.eval_tta)

    if ema is None:
        return train_step, eval_step(model), None
    return train_step, eval_step(ema.module), eval_step(model)


def _switch_model(run: RunState, name: str) -> None:
    """Put a fresh ``name`` (same seed, same recipe) in place of the run's model: a budget too
    short for the configured WRN trains a narrower one (``train.budget_min_epochs``)."""
    cfg = dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model, name=name))
    num_classes = cfg.model.num_classes or len(run.extra_state["classes"])
    run.model, train_model, run.optimizer, run.skipper = _model_and_optimizer(cfg, run.device, num_classes)
    run.ema = step.make_ema(run.model, cfg.train.ema)
    run.train_step, run.eval_step, run.eval_step_raw = _steps(cfg, run.model, train_model, run.skipper or run.optimizer,
                                                              run.device, run.decisions, run.ema)
    run.cfg = cfg


def narrow(run: RunState, model: str, configured_epochs: float) -> int:
    """Start the run over from step 0 with ``model`` (``pace.Narrow``): the configured WRN's steps
    so far are discarded (its log lines and checkpoints too: a resume must find the model
    config.yaml names), their time stays counted. Returns the step to start from."""
    cfg, spe = run.cfg, len(run.loaders["train"])
    run.log.info(f"{cfg.model.name} would get only {configured_epochs:.2g} epochs in "
                 f"{format_duration(cfg.train.time_budget)} (train.budget_min_epochs="
                 f"{cfg.train.budget_min_epochs:g}): training {model} instead, from step 0")
    run.decisions.setdefault("configured_model", cfg.model.name)
    _switch_model(run, model)
    if run.is_main:
        for stale in (checkpoint.CHECKPOINT, checkpoint.OLD, checkpoint.KEPT):
            shutil.rmtree(run.out_dir / stale, ignore_errors=True)
    run.log.close()
    start = start_run(run, None)  # config.yaml names the narrower WRN; the log starts again
    run.log.write({"kind": "budget_model", "step": 0, "configured": run.decisions["configured_model"],
                   "model": model, "configured_epochs": configured_epochs, "elapsed_s": run.elapsed()})
    return start


def build_run(cfg: Config, out_dir: Path, resume: bool, quiet: bool, t_fit: float,
              command: str | None = None) -> tuple[RunState, dict | None]:
    """Data, model, optimizer, compiled steps and the restored checkpoint (if resuming)."""
    rank, world_size, _ = dist.world()
    is_main = rank == 0
    ckpt_dir = None
    if resume:
        try:
            ckpt_dir = checkpoint.find_checkpoint(out_dir)
        except UserError:
            if checkpoint.saved_any(out_dir):
                raise  # damaged with no complete one to fall back to: never silently start over
            ckpt_dir = None  # killed before its first checkpoint: start over in the same directory
    source, inherited = finetune.prepare(cfg, ckpt_dir)  # fine-tuning: DIR is checked before the data loads
    if cfg.train.batch_size % world_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} does not divide among {world_size} processes")

    if is_main:  # a read-only or full output directory fails now, not after the data is loaded
        checkpoint.check_writable(out_dir)
    device = dist.local_device(accel.resolve_device(cfg.accel.device))
    # On resume the run's own fitted ZCA whitening, not a new fit (which could round differently elsewhere).
    whitening = find_whitening(cfg, out_dir) if ckpt_dir is not None else None
    data = build_data(cfg, device, rank=rank, world_size=world_size, whitening=whitening)
    num_classes = cfg.model.num_classes or len(data.classes)
    spe = len(data.loaders["train"])

    model, train_model, optimizer, skipper = _model_and_optimizer(cfg, device, num_classes, inherited)
    state: dict[str, Any] | None = None
    init = None
    if source is not None:  # after the seeded init: a new classifier is the same in every replay
        cfg, init = finetune.start_from(source, model, cfg)
    ema = step.make_ema(model, cfg.train.ema)  # from the weights training starts from (--init's too)
    if ckpt_dir is not None:
        state = checkpoint.restore(ckpt_dir, model, optimizer, ema.module if ema is not None else None)
        if ema is not None:
            ema.n_averaged.fill_(state.get("ema_updates", 0))
        if state["steps_per_epoch"] != spe:
            raise UserError(f"{ckpt_dir}: the checkpoint has {state['steps_per_epoch']} steps per epoch but this "
                            f"config gives {spe}: resume with the run's own data and train.batch_size")
    hyper = scaled(cfg.optim, cfg.train.batch_size, cfg.train.epochs)
    if cfg.train.time_budget and not cfg.train.steps and not cfg.optim.warmup_steps:
        # The budget times the warm-up to choose train.steps: its length must not depend on them.
        warmup = round(hyper.warmup_epochs * spe)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=warmup))
    # A budget's choice is in the config (train.steps) once made; until then plan the recipe's length.
    planned = cfg.train.steps or cfg.train.epochs * spe
    decisions = dict((state or {}).get("decisions") or {})
    if "precision" not in decisions:
        decisions["precision"] = accel.resolve_precision(cfg.accel.precision, device)
    if "compile" not in decisions:
        decisions["compile"], decisions["compile_reason"] = accel.should_compile(
            cfg.accel.compile, planned, device.type, decisions["precision"])
    train_step, eval_step, eval_step_raw = _steps(cfg, model, train_model, skipper or optimizer, device, decisions, ema)
    run = RunState(cfg=cfg, out_dir=out_dir, device=device, model=model, optimizer=optimizer, train_step=train_step,
                   eval_step=eval_step, schedule=Schedule(cfg.optim, hyper, spe, cfg.train.epochs, total_steps=planned),
                   augment=data.augment, loaders=data.loaders, log=None, rank=rank, is_main=is_main,
                   generator=torch.Generator(device=device), skipper=skipper, total_steps=planned,
                   decisions=decisions, whitening=data.whitening,
                   extra_state={"normalize": {"mean": data.mean, "std": data.std,
                                              "zca": ZCA_FILE if data.whitening is not None else None},
                                "classes": data.classes, "input_size": data.input_size,
                                **({"init": init or state.get("init")} if cfg.train.init else {})},
                   train_images=data.train_images, quiet=quiet, start_time=t_fit, command=command,
                   elapsed_before=state["elapsed_s"] if state else 0.0, ema=ema, eval_step_raw=eval_step_raw)
    return run, state


def start_run(run: RunState, state: dict | None) -> int:
    """Write config.yaml (a fresh run) and the start record; returns the step to start from. A
    budget too short for start-up is refused here, before anything is written."""
    cfg, out_dir = run.cfg, run.out_dir
    start = state["step"] if state else 0
    if state is None and cfg.train.time_budget and not cfg.train.steps:
        budget.check_start(cfg.train.time_budget, run.elapsed())
    # config.yaml first (never on resume: the run's config.yaml is what it is): a run killed from
    # here on, even before the budget decides, is a run directory that --resume can continue.
    if run.is_main and state is None:
        if run.whitening is not None:
            zca.save(run.whitening, out_dir / ZCA_FILE)
        write_atomic(out_dir / rundir.CONFIG, cfg.to_yaml().encode())
    if run.is_main:
        rundir.truncate_log(out_dir, start if state else -1)  # a start-over keeps none of the old lines
    run.log = RunLog(out_dir, enabled=run.is_main, quiet=run.quiet, tensorboard=cfg.log.tensorboard,
                     resume_step=start if state else None)
    # Before the first timed step: the budget must time the steps training will take (malloc keeping
    # freed memory makes a CPU step 11-15% faster; set after the timing, budgets went unused).
    kept_memory = cfg.accel.keep_memory and accel.keep_freed_memory(run.device)
    if run.is_main and state is None:
        run.log.hparams(dataclasses.asdict(cfg))
    run.pace = Pace(run, start)
    spe = len(run.loaders["train"])
    params = sum(p.numel() for p in run.model.parameters())
    run.log.write({"kind": "resume" if state else "start", "step": start, "device": str(run.device), "params": params,
                   "world_size": dist.world()[1], "steps_per_epoch": spe, "total_steps": run.total_steps,
                   "lr": run.schedule.hyper.lr, "weight_decay": run.schedule.hyper.weight_decay,
                   "warmup_epochs": run.schedule.hyper.warmup_epochs, "compile": run.decisions["compile"],
                   "compile_reason": run.decisions["compile_reason"], "time_budget_s": cfg.train.time_budget,
                   "keep_memory": kept_memory, "elapsed_s": run.elapsed(), **(run.resume_info if state else {}),
                   "provenance": provenance(run.command)})  # a resumed part may run on another machine
    init = run.extra_state.get("init")
    if init and state is None:  # fine-tuning: where the weights came from (a resume keeps this line)
        run.log.write({"kind": "init", "step": 0, **init})
        run.log.info(finetune.describe(init, run.extra_state["normalize"]))
    run.log.info(f"{cfg.model.name}: {params / 1e6:.2f}M params | {run.train_images} train images, {spe} steps/epoch, "
                 f"{run.total_steps} steps ({run.total_steps / spe:.4g} epochs) | {run.device}, {run.decisions['precision']}"
                 f"{', channels_last' if cfg.accel.channels_last else ''} | {run.decisions['compile_reason']}"
                 + (f" | resumed at step {start}" if state else ""))
    return start
