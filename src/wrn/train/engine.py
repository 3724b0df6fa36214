"""The training loop: plain functions ``train_one_epoch``, ``evaluate`` and ``fit``.

    summary = fit(load_config("quick", overrides=["data.path=cifar10.tar.xz"]), "runs/q")

Everything random is a pure function of (seed, global step): the data order comes from the
loader's (seed, epoch) permutation, and before each step the augmentation generator and torch's
global RNG (dropout, stochastic depth) are seeded from (seed, step, rank). So a run resumed from a
mid-epoch checkpoint takes exactly the steps the uninterrupted run took, and ends with the same
weights bit for bit on CPU. (RNG states are saved in the checkpoint too, for anything else.)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn.errors import UserError
from wrn.train import accel, checkpoint, dist
from wrn.train.config import PAPER_STATS, Config, model_kwargs
from wrn.fsio import write_atomic
from wrn.train.log import RunLog, git_commit, truncate_log, write_json
from wrn.train.optim import Schedule, build_optimizer, scaled, set_lr


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the run stops, the last good checkpoint stays."""


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed for one (run seed, global step, rank, purpose): independent streams per step."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SkipNonFinite:
    """Optimizer wrapper for train.skip_nonfinite: no update from a batch with a NaN/inf gradient.

    It checks the gradients on the host before each update (one sync per step), which is the
    price of skipping; the default (stop on NaN) needs no per-step sync. The forward pass of a
    bad batch also moved the BN running statistics, so those are put back from a copy taken
    before the step (``remember``; BN buffers are small).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module):
        self.optimizer = optimizer
        self.skipped = 0
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.backup = [b.detach().clone() for b in self.buffers]

    def remember(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.backup, self.buffers)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self) -> None:
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.skipped += 1
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.backup)
            return
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


@dataclass
class EpochSums:
    """Running sums on the device (no host sync per step)."""
    loss: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    bad_step: torch.Tensor | None = None  # first step with a non-finite loss, -1 if none

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochSums":
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device), 0,
                   torch.full((), -1, dtype=torch.int64, device=device))

    def to_json(self) -> dict[str, Any]:
        return {"loss": self.loss.item(), "correct": int(self.correct.item()), "count": self.count}

    @classmethod
    def from_json(cls, data: dict[str, Any], device: torch.device) -> "EpochSums":
        sums = cls.zeros(device)
        sums.loss.fill_(data["loss"])
        sums.correct.fill_(data["correct"])
        sums.count = data["count"]
        return sums


@dataclass
class Run:
    """What ``fit`` builds once and the epoch functions use."""
    cfg: Config
    out_dir: Path
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_step: Callable
    eval_step: Callable
    schedule: Schedule
    augment: Any
    loaders: dict[str, Any]
    log: RunLog
    rank: int = 0
    is_main: bool = True
    generator: torch.Generator | None = None
    skipper: SkipNonFinite | None = None
    start_time: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0  # seconds spent before a resume

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time


def _all_ranks(sums: EpochSums) -> EpochSums:
    """The sums over every process under torchrun (a collective: all processes call it)."""
    loss, correct, count = dist.all_sum(sums.loss, sums.correct, sums.count)
    return EpochSums(loss, correct, count, sums.bad_step)


def _check_finite(run: Run, sums: EpochSums) -> None:
    bad = dist.first_bad_step(sums.bad_step)  # the same answer on every process: all stop together
    if bad >= 0:
        spe = len(run.loaders["train"])
        where = run.out_dir / checkpoint.CHECKPOINT
        kept = f"the last good checkpoint is kept in {where}" if where.exists() else "no checkpoint was written yet"
        run.log.write({"kind": "error", "step": bad, "epoch": bad // spe, "error": "non-finite loss"})
        raise NonFiniteLoss(f"loss became NaN/inf at step {bad} (epoch {bad // spe + 1}): training stopped and "
                            f"{kept}; lower optim.lr, or set train.skip_nonfinite=true to skip such batches")


def _save(run: Run, step: int, sums: EpochSums | None, metrics: dict[str, Any] | None, extra: dict[str, Any]) -> None:
    # Collectives before rank 0 alone writes: all processes' sums and averaged BN statistics.
    sums = _all_ranks(sums) if sums is not None else None
    dist.average_buffers(run.model)
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
             "metrics": metrics, "elapsed_s": run.elapsed(), **extra}
    checkpoint.save_checkpoint(run.out_dir, model=run.model, optimizer=run.optimizer, state=state)


def train_one_epoch(run: Run, epoch: int, start_step: int = 0, sums: EpochSums | None = None,
                    extra_state: dict[str, Any] | None = None) -> EpochSums:
    """Train ``epoch`` from batch ``start_step`` on; returns the epoch's running sums."""
    cfg = run.cfg
    loader = run.loaders["train"]
    spe = len(loader)
    sums = sums or EpochSums.zeros(run.device)
    window = EpochSums.zeros(run.device)  # since the last "step" line
    window_start = time.perf_counter()
    run.model.train()
    bar = run.log.progress(spe, start_step, f"epoch {epoch + 1}/{cfg.train.epochs}")
    for i, (images, labels) in enumerate(loader.epoch(epoch, start_step), start=start_step):
        step = epoch * spe + i  # the global step being taken
        lr = run.schedule(step)
        set_lr(run.optimizer, lr)
        torch.manual_seed(step_seed(cfg.train.seed, step, run.rank, 0))  # dropout, drop-path
        run.generator.manual_seed(step_seed(cfg.train.seed, step, run.rank, 1))  # crop, flip, cutout
        x = run.augment(images, run.generator)  # [B, 3, H, W] float32, normalised
        if cfg.accel.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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
        every = cfg.train.checkpoint_every
        # The epoch's last step is covered by the epoch-end checkpoint (written after evaluation).
        if every and done % every == 0 and i + 1 < spe:
            _check_finite(run, sums)
            _save(run, done, sums, None, extra_state or {})
    bar.close()
    _check_finite(run, sums)
    return sums


@torch.no_grad()
def evaluate(run: Run, split: str) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a split, without augmentation; one host sync at the end."""
    loader = run.loaders[split]  # this process's shard under torchrun
    dist.average_buffers(run.model)
    run.model.eval()
    loss = torch.zeros((), device=run.device, dtype=torch.float64)
    correct = torch.zeros((), device=run.device, dtype=torch.int64)
    n = 0
    for images, labels in loader.epoch(0):
        x = run.augment.normalize(images)
        if run.cfg.accel.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = run.eval_step(x)
        loss += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        n += labels.numel()
    loss, correct, n = dist.all_sum(loss, correct, n)
    run.model.train()
    if n == 0:
        return float("nan"), float("nan")
    return loss.item() / n, correct.item() / n


# -- data ------------------------------------------------------------------------------------------

@dataclass
class Data:
    """Loaders (``len``, ``epoch(e, start_step)`` -> uint8 NHWC batches on the device), the
    augmentation/normalisation that turns a batch into model input, and what the run reports."""
    loaders: dict[str, Any]
    augment: Any
    classes: list[str]
    mean: list[float]
    std: list[float]
    train_images: int


def _normalization(cfg: Config, train_split) -> tuple[list[float], list[float]]:
    from wrn.data import channel_stats

    if cfg.data.normalize == "none":  # pixels / 255 (the paper's SVHN)
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if cfg.data.normalize == "paper" or train_split is None:  # (streamed data: no pass over it)
        mean, std = PAPER_STATS[cfg.data.name if cfg.data.name in PAPER_STATS else "imagenet"]
        return list(mean), list(std)
    mean, std = channel_stats(train_split)
    return [float(m) for m in mean], [float(s) for s in std]


def load_splits(cfg: Config) -> dict[str, Any]:
    """train / val / test ArrayDatasets for the config (the val split is carved from train)."""
    from wrn.data import load_dataset, make_splits

    datasets = load_dataset(cfg.source(), cache_dir=cfg.data.cache_dir)
    if cfg.data.use_extra and "extra" not in datasets:
        raise UserError(f"data.use_extra=true but {cfg.source()!r} has no 'extra' split: set data.use_extra=false")
    return make_splits(datasets, val_size=cfg.data.val_size, subset=cfg.data.subset, seed=cfg.train.seed,
                       use_extra=cfg.data.use_extra)


def _streaming_data(cfg: Config, device: torch.device, rank: int, world_size: int, splits: tuple[str, ...],
                    stats: tuple[list[float], list[float]] | None) -> Data:
    """ImageNet-size data: files stay on disk, DataLoader workers decode and crop; the val/ folder
    serves as the test split (as is customary for ImageNet)."""
    if not cfg.data.path:
        raise UserError(f"data.streaming ({cfg.data.name}) needs a local copy: pass --data /path/to/images "
                        "(root/train/<class>/*.jpg and root/val/<class>/*.jpg, or a .zip/.tar of them)")
    from wrn.data.augment import Augment
    from wrn.data.streaming import StreamingLoader

    common = dict(device=device, seed=cfg.train.seed, workers=cfg.data.workers, image_size=cfg.data.image_size,
                  rank=rank, world_size=world_size)
    loaders: dict[str, Any] = {}
    if "train" in splits:
        loaders["train"] = StreamingLoader(cfg.data.path, "train", cfg.train.batch_size // world_size, train=True,
                                           **common)
    if "test" in splits:
        loaders["test"] = StreamingLoader(cfg.data.path, "val", cfg.train.eval_batch_size, train=False, **common)
    mean, std = stats or _normalization(cfg, None)
    # Crops and flips happen in the workers; on the device only normalisation remains.
    augment = Augment(mean, std, crop_padding=0, flip=False)
    first = next(iter(loaders.values()))
    n = len(loaders["train"].dataset) if "train" in loaders else 0
    return Data(loaders, augment, list(first.classes), mean, std, n)


def _check_classes(cfg: Config, train_split, classes: list[str]) -> None:
    """Labels a classifier can learn, checked before any work: >= 2 classes, each with training
    images, all within model.num_classes (else the loss fails mid-run with an index error)."""
    import numpy as np

    if len(classes) < 2:
        raise UserError(f"{cfg.source()}: the data has only {len(classes)} class {classes}: a classifier needs at "
                        "least 2 (one folder per class, e.g. train/cat/, train/dog/)")
    counts = np.bincount(np.asarray(train_split.labels), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise UserError(f"{cfg.source()}: class {empty[0]!r} has no training images (an empty train/{empty[0]}/ folder, "
                        "or data.val_size / data.subset took them all): add images or remove the class everywhere")
    if cfg.model.num_classes and cfg.model.num_classes < len(classes):
        raise UserError(f"model.num_classes: {cfg.model.num_classes} is fewer than the {len(classes)} classes in the "
                        f"data: set it to {len(classes)}, or 0 to take it from the data")


def build_data(cfg: Config, device: torch.device, *, rank: int = 0, world_size: int = 1,
               splits: tuple[str, ...] = ("train", "val", "test"),
               stats: tuple[list[float], list[float]] | None = None) -> Data:
    """Loaders for the requested splits (evaluation splits sharded over processes under torchrun).
    ``stats`` (mean, std) overrides the normalisation: evaluation reuses the run's own."""
    if cfg.data.streaming:
        return _streaming_data(cfg, device, rank, world_size, splits, stats)
    from wrn.data.augment import Augment
    from wrn.data.loader import DeviceLoader

    arrays = load_splits(cfg)
    train = arrays["train"]
    if "train" in splits and len(train) < cfg.train.batch_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is larger than the training split "
                        f"({len(train)} images): lower it")
    if "train" in splits:
        _check_classes(cfg, train, list(train.classes))
        h, w = train.images.shape[1:3]
        if cfg.data.augment and min(h, w) <= 4:  # else the first step fails inside the reflect padding
            raise UserError(f"data.augment: the images are {w}x{h}, too small for the 4-pixel reflect-pad crop: "
                            "set data.augment=false")
    mean, std = stats or _normalization(cfg, train)
    augment = Augment(mean, std, crop_padding=4 if cfg.data.augment else 0, flip=cfg.data.augment,
                      cutout=cfg.data.cutout)
    loaders: dict[str, Any] = {}
    if "train" in splits:
        loaders["train"] = DeviceLoader(train, cfg.train.batch_size // world_size, device=device, shuffle=True,
                                        drop_last=True, seed=cfg.train.seed, rank=rank, world_size=world_size)
    for name in ("val", "test"):
        if name in splits and len(arrays[name]):
            loaders[name] = DeviceLoader(arrays[name], cfg.train.eval_batch_size, device=device, shuffle=False,
                                         drop_last=False, rank=rank, world_size=world_size)
    return Data(loaders, augment, list(train.classes), mean, std, len(train))


# -- fit -------------------------------------------------------------------------------------------

def _model_summary_args(model: nn.Module) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in checkpoint.unwrap(model).model_args.items()}


def _epoch_means(out_dir: Path) -> tuple[float | None, float | None]:
    times, rates = [], []
    path = out_dir / "log.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("kind") == "epoch":
                times.append(r["epoch_time_s"])
                rates.append(r["img_per_s"])
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return mean(times), mean(rates)


@dist.with_process_group
def fit(cfg: Config, out_dir: str | Path, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir`` (config.yaml, log.jsonl, checkpoint/, summary.json).

    With ``resume=True`` it continues from the newest complete checkpoint in ``out_dir`` (or starts
    over there if the run was killed before its first checkpoint). Returns summary.json's content.
    """
    t_fit = time.perf_counter()  # wall time counts data loading and model building too
    out_dir = Path(out_dir)
    rank, world_size, _ = dist.world()
    is_main = rank == 0
    quiet = quiet or cfg.log.quiet

    summary_path = out_dir / "summary.json"
    if resume and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished"):
            if is_main and not quiet:
                print(f"wrn: {out_dir} already finished (test accuracy {100 * summary['test_acc']:.2f}%)")
            return summary

    ckpt_dir = None
    if resume:
        try:
            ckpt_dir = checkpoint.find_checkpoint(out_dir)
        except UserError:
            if (out_dir / checkpoint.CHECKPOINT).exists():
                raise  # damaged with no complete one to fall back to: never silently start over
            ckpt_dir = None  # killed before its first checkpoint: start over in the same directory
    if cfg.train.batch_size % world_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} does not divide among {world_size} processes")

    if is_main:  # a read-only or full output directory fails now, not after the data is loaded
        checkpoint.check_writable(out_dir)
    device = dist.local_device(accel.resolve_device(cfg.accel.device))
    data = build_data(cfg, device, rank=rank, world_size=world_size)
    loaders, augment, classes, mean, std = data.loaders, data.augment, data.classes, data.mean, data.std
    num_classes = cfg.model.num_classes or len(classes)
    per_rank_batch = cfg.train.batch_size // world_size
    from wrn.models import create_model

    spe = len(loaders["train"])
    total_steps = cfg.train.epochs * spe

    torch.manual_seed(cfg.train.seed)  # the initial weights
    model = create_model(cfg.model.name, **model_kwargs(cfg, num_classes))
    model = accel.prepare_model(model, device, cfg.accel.channels_last)
    train_model = dist.wrap_model(model, device, sync_bn=cfg.accel.sync_bn)  # DDP under torchrun
    hyper = scaled(cfg.optim, cfg.train.batch_size, cfg.train.epochs)
    optimizer = build_optimizer(model, cfg.optim, hyper)
    skipper = SkipNonFinite(optimizer, model) if cfg.train.skip_nonfinite else None

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "config.yaml", cfg.to_yaml().encode())
    state: dict[str, Any] | None = None
    if ckpt_dir is not None:
        state = checkpoint.restore(ckpt_dir, model, optimizer)
        if state["steps_per_epoch"] != spe:
            raise UserError(f"{ckpt_dir}: the checkpoint has {state['steps_per_epoch']} steps per epoch but this "
                            f"config gives {spe}: resume with the run's own data and train.batch_size")
    start = state["step"] if state else 0
    if is_main:
        truncate_log(out_dir, start if state else -1)  # a start-over keeps none of the old lines
    log = RunLog(out_dir, enabled=is_main, quiet=quiet)

    kept_memory = cfg.accel.keep_memory and accel.keep_freed_memory(device)
    do_compile, reason = accel.should_compile(cfg.accel.compile, total_steps - start, device)
    train_step = accel.make_train_step(train_model, skipper or optimizer, precision=cfg.accel.precision, device=device,
                                       compile=do_compile, label_smoothing=cfg.optim.label_smoothing,
                                       compile_mode=cfg.accel.compile_mode, cuda_graphs=cfg.accel.cuda_graphs,
                                       fused_optimizer=cfg.accel.fused_optimizer, threads=cfg.accel.threads)
    eval_step = accel.make_eval_step(model, precision=cfg.accel.precision, device=device, compile=do_compile,
                                     compile_mode=cfg.accel.compile_mode, cuda_graphs=cfg.accel.cuda_graphs)
    run = Run(cfg=cfg, out_dir=out_dir, device=device, model=model, optimizer=optimizer, train_step=train_step,
              eval_step=eval_step, schedule=Schedule(cfg.optim, hyper, spe, cfg.train.epochs), augment=augment,
              loaders=loaders, log=log, rank=rank, is_main=is_main,
              generator=torch.Generator(device=device), skipper=skipper,
              start_time=t_fit, elapsed_before=state["elapsed_s"] if state else 0.0)
    params = sum(p.numel() for p in model.parameters())
    extra_state = {"normalize": {"mean": mean, "std": std}, "classes": classes}

    log.write({"kind": "resume" if state else "start", "step": start, "device": str(device), "params": params,
               "world_size": world_size,
               "steps_per_epoch": spe, "total_steps": total_steps, "lr": hyper.lr,
               "weight_decay": hyper.weight_decay, "warmup_epochs": hyper.warmup_epochs, "compile": do_compile,
               "compile_reason": reason, "keep_memory": kept_memory, "elapsed_s": run.elapsed()})
    log.info(f"{cfg.model.name}: {params / 1e6:.2f}M params | {data.train_images} train images, {spe} steps/epoch, "
             f"{cfg.train.epochs} epochs | {device}, {cfg.accel.precision}"
             f"{', channels_last' if cfg.accel.channels_last else ''} | {reason}"
             + (f" | resumed at step {start}" if state else ""))

    metrics: dict[str, Any] = (state or {}).get("metrics") or {}
    # The saved partial sums cover all processes: rank 0 carries them on, the others start at zero.
    sums = EpochSums.from_json(state["partial"], device) if state and state.get("partial") and is_main else None
    try:
        for epoch in range(start // spe, cfg.train.epochs):
            epoch_start_step = start % spe if epoch == start // spe else 0
            t0 = time.perf_counter()
            sums = _all_ranks(train_one_epoch(run, epoch, epoch_start_step, sums, extra_state))
            count = sums.count
            train_loss = sums.loss.item() / count
            train_acc = sums.correct.item() / count
            epoch_time = time.perf_counter() - t0  # train only; .item() above waited for the device
            trained = (spe - epoch_start_step) * per_rank_batch * world_size
            metrics = {"kind": "epoch", "epoch": epoch, "step": (epoch + 1) * spe,
                       "lr": run.schedule((epoch + 1) * spe - 1), "train_loss": train_loss, "train_acc": train_acc,
                       "val_loss": None, "val_acc": None}
            if "val" in loaders:
                metrics["val_loss"], metrics["val_acc"] = evaluate(run, "val")
            if cfg.log.test_every_epoch:
                _, metrics["test_acc"] = evaluate(run, "test")  # learning curves only; never used for choices
            metrics.update(epoch_time_s=epoch_time, img_per_s=trained / max(epoch_time, 1e-9),
                           elapsed_s=run.elapsed())
            if skipper is not None:
                metrics["skipped"] = skipper.skipped
            log.write(metrics)
            log.epoch_line(metrics, cfg.train.epochs)
            _save(run, (epoch + 1) * spe, None, metrics, extra_state)
            if is_main and cfg.train.keep_every and (epoch + 1) % cfg.train.keep_every == 0:
                checkpoint.keep_copy(out_dir, epoch + 1)
            sums = None

        test_loss, test_acc = evaluate(run, "test")
        epoch_time_s, img_per_s = _epoch_means(out_dir) if is_main else (None, None)
        summary = {"model": cfg.model.name, "model_args": _model_summary_args(model), "dataset": cfg.data.name,
                   "data_source": cfg.source(), "params": params, "epochs": cfg.train.epochs,
                   "test_acc": test_acc, "test_loss": test_loss, "val_acc": metrics.get("val_acc"),
                   "val_loss": metrics.get("val_loss"), "train_acc": metrics.get("train_acc"),
                   "train_loss": metrics.get("train_loss"), "wall_time_s": run.elapsed(),
                   "epoch_time_s": epoch_time_s, "img_per_s": img_per_s, "steps": total_steps,
                   "device": str(device), "precision": cfg.accel.precision, "git_commit": git_commit(),
                   "finished": True}
        replicas = dist.replica_report(model)  # torchrun: every process's weight checksum
        if is_main:
            log.write({"kind": "end", "step": total_steps, "test_loss": test_loss, "test_acc": test_acc,
                       "elapsed_s": run.elapsed(), **replicas})
            write_json(summary_path, summary)
        log.info(f"test accuracy {100 * test_acc:.2f}% (final epoch) | wall time {run.elapsed():.0f}s | {out_dir}")
        return summary
    finally:
        log.close()
