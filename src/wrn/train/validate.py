"""Validation of a whole config before any work: every value in range, and the model built on
the meta device so that the config accepts exactly what ``create_model`` accepts. Every problem
is a one-line ``UserError`` naming the key.

The functions take a ``wrn.train.config.Config`` (``cfg``) without importing it: config.py imports
this module, and the arrow stays one way."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from wrn.data.catalog import DATASETS
from wrn.data.policies import MAX_MAGNITUDE, MAX_OPS, POLICIES
from wrn.errors import UserError
from wrn.models import create_model
from wrn.models.variants import normalizes_inside
from wrn.train.accel import COMPILE_MODES, CONFIG_PRECISIONS
from wrn.train.checkpoint import WEIGHTS
from wrn.train.log import summary_writer_class

MAX_MODEL_NUMBER = 2000
SCHEDULES = ("step", "cosine", "onecycle")
NORMALIZATIONS = ("dataset", "paper", "none", "zca")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def _meta_build(name: str, kwargs: dict[str, Any]) -> None:
    with torch.device("meta"):  # no memory, no compute
        create_model(name, **kwargs)


def model_kwargs(cfg, num_classes: int | None = None) -> dict[str, Any]:
    """Constructor keywords for ``create_model``: only what the config sets, so that models
    without a block argument (resnet-110, wide_resnet50_2) still build. Dropout applies "where
    the model uses it" (the paper's recipe): a model without a dropout argument trains without."""
    kwargs: dict[str, Any] = {"num_classes": num_classes or cfg.model.num_classes or 10}
    if cfg.model.block is not None:
        kwargs["block"] = list(cfg.model.block)
    if cfg.model.blocks_per_group is not None:
        kwargs["blocks_per_group"] = cfg.model.blocks_per_group
    if cfg.model.activation is not None:
        kwargs["activation"] = cfg.model.activation
    if cfg.model.dropout:
        try:
            _meta_build(cfg.model.name, {**kwargs, "dropout": cfg.model.dropout})
            kwargs["dropout"] = cfg.model.dropout
        except (TypeError, ValueError) as e:
            if "dropout" not in str(e):
                kwargs["dropout"] = cfg.model.dropout  # another problem: let the caller see it
    return kwargs


def _check_model(cfg) -> None:
    """Build the model on the meta device: the constructor itself judges depth/block/width, so
    the config accepts exactly what ``create_model`` accepts."""
    kwargs = model_kwargs(cfg)
    try:
        _meta_build(cfg.model.name, kwargs)
    except (TypeError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else "invalid model settings"
        # Name the key whose argument the constructor complains about ('block' etc.), else the model.
        bad = next((k for k in ("blocks_per_group", "block", "dropout", "num_classes", "activation")
                    if f"'{k}'" in message or message.startswith(f"{k}=")), None)
        if bad is None and cfg.model.block is not None and message.startswith("block "):
            bad = "block"  # "block (2, 3) has kernel size 2: ..."
        key = f"model.{bad}" if bad else "model.name"
        raise UserError(f"{key}: {message}") from None


def _check_constants(d) -> None:
    """data.mean/data.std: both or neither, one positive std per channel, and not with a
    normalisation they would contradict (none: pixels / 255; zca: whitening instead)."""
    if d.mean is None and d.std is None:
        return
    _check(d.mean is not None and d.std is not None, "data.mean" if d.mean is None else "data.std",
           "is missing: give data.mean=R,G,B and data.std=R,G,B together")
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        _check(len(values) == 3 and all(math.isfinite(v) for v in values), key,
               f"{list(values)} must be 3 numbers on the [0, 1] pixel scale, e.g. {key}=0.485,0.456,0.406")
    _check(all(v > 0 for v in d.std), "data.std", f"{list(d.std)} must be positive")
    _check(d.normalize in ("dataset", "paper"), "data.mean",
           f"explicit constants replace data.normalize=dataset|paper, not {d.normalize}: drop one of them")


def _check_init(cfg) -> None:
    """train.init / train.init_sha256: the fine-tuned model is the source's, so nothing may change it
    (a budget's narrower WRN), and a model that normalises inside takes the source's [0, 1] inputs."""
    t = cfg.train
    _check(t.init is None or bool(t.init.strip()), "train.init", "is empty: give a run or imported directory")
    _check(t.init_sha256 is None or re.fullmatch(r"[0-9a-f]{64}", t.init_sha256) is not None, "train.init_sha256",
           f"{t.init_sha256!r} is not a sha256 (64 hex digits): leave it unset, the run records it")
    _check(t.init_sha256 is None or t.init is not None, "train.init_sha256", "is set without train.init: drop it")
    _check(t.init_weights in (None, *WEIGHTS), "train.init_weights",
           f"{t.init_weights!r}: use {' or '.join(WEIGHTS)}, or leave it unset (the average where the run kept one)")
    _check(t.init_weights is None or t.init is not None, "train.init_weights", "is set without train.init: drop it")
    if t.init is None:
        return
    _check(not (t.budget_min_epochs and t.time_budget and not t.steps), "train.budget_min_epochs",
           "a fine-tuning run (train.init) keeps its source's architecture: a budget cannot narrow it; use 0")
    _check(cfg.data.normalize == "none" or not normalizes_inside(cfg.model.name), "data.normalize",
           f"{cfg.model.name} normalises inside the model and its weights take [0, 1] pixels: fine-tuning them "
           f"(train.init) needs data.normalize=none, not {cfg.data.normalize}")


def validate(cfg) -> None:
    """Every value in range, before any work; raises a one-line UserError naming the key."""
    m, d, t, o, a, lg = cfg.model, cfg.data, cfg.train, cfg.optim, cfg.accel, cfg.log
    _check(bool(m.name.strip()), "model.name", "is empty: give a model, e.g. wrn-16-4")
    # Validation builds the model on the meta device: cap the numbers first so that a typo like
    # wrn-1000000-1 is an instant error, not millions of modules (preact-resnet-1001 is the deepest).
    big = max((int(n) for n in re.findall(r"\d+", m.name)), default=0)
    _check(big <= MAX_MODEL_NUMBER, "model.name",
           f"{big} is too large for a depth or width (at most {MAX_MODEL_NUMBER}): e.g. wrn-28-10")
    _check(m.blocks_per_group is None or m.blocks_per_group <= MAX_MODEL_NUMBER, "model.blocks_per_group",
           f"{m.blocks_per_group} is too large (at most {MAX_MODEL_NUMBER})")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"{m.dropout} is out of range: use 0 <= dropout < 1")
    _check(m.block is None or (len(m.block) > 0 and all(k >= 1 and k % 2 == 1 for k in m.block)),
           "model.block", f"{m.block} is not a tuple of odd kernel sizes: e.g. model.block=3,3 or 3,1,3")
    _check(m.blocks_per_group is None or m.blocks_per_group >= 1, "model.blocks_per_group",
           f"{m.blocks_per_group} must be >= 1 (or none to derive it from the depth)")
    _check(m.num_classes >= 0, "model.num_classes", f"{m.num_classes} must be >= 0 (0 = from the data)")

    _check(bool(d.name.strip()) or bool(d.path), "data.name", "is empty: give a dataset name or data.path")
    _check(d.val_size >= 0, "data.val_size", f"{d.val_size} must be >= 0")
    _check(d.subset >= 0, "data.subset", f"{d.subset} must be >= 0 (0 = all training images)")
    _check(d.cutout >= 0, "data.cutout", f"{d.cutout} must be >= 0 (0 = off)")
    _check(d.policy in POLICIES, "data.policy", f"unknown policy {d.policy!r}: use {' | '.join(POLICIES)}")
    _check(1 <= d.policy_ops <= MAX_OPS, "data.policy_ops",
           f"{d.policy_ops} is out of range: use 1 to {MAX_OPS} (RandAugment's N operations per image)")
    _check(0 <= d.policy_magnitude <= MAX_MAGNITUDE, "data.policy_magnitude",
           f"{d.policy_magnitude} is out of range: use 0 to {MAX_MAGNITUDE} (RandAugment's M)")
    _check(not (d.policy != "none" and d.streaming), "data.policy",
           f"{d.policy} augments small images held on the device (CIFAR, SVHN), not streamed ones: use none")
    _check(d.image_size >= 8, "data.image_size", f"{d.image_size} must be >= 8")
    _check(d.workers >= 0, "data.workers", f"{d.workers} must be >= 0")
    _check(d.normalize in NORMALIZATIONS, "data.normalize",
           f"unknown normalization {d.normalize!r}: use {' | '.join(NORMALIZATIONS)}")
    if d.normalize == "paper":
        published = [n for n, info in DATASETS.items() if info.mean is not None]
        _check(d.name in published, "data.normalize",
               f"'paper' constants exist only for {', '.join(published)}: use dataset or none")
    _check_constants(d)
    _check(d.mean is None or not normalizes_inside(m.name), "data.mean",
           f"{m.name} normalises its inputs inside the model (its mean/std arguments): drop data.mean/data.std")
    _check(math.isfinite(d.zca_epsilon) and d.zca_epsilon > 0, "data.zca_epsilon",
           f"{d.zca_epsilon} must be a positive number (the paper's is 0.1)")
    _check(not (d.normalize == "zca" and d.streaming), "data.normalize",
           "zca whitens small images held in memory (CIFAR, SVHN), not streamed ones: use dataset or paper")

    _check(t.epochs >= 1, "train.epochs", f"{t.epochs} must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", f"{t.batch_size} must be >= 1")
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", f"{t.eval_batch_size} must be >= 1")
    _check(t.seed >= 0, "train.seed", f"{t.seed} must be >= 0")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", f"{t.checkpoint_every} must be >= 0 (0 = epoch ends only)")
    _check(t.keep_every >= 0, "train.keep_every", f"{t.keep_every} must be >= 0 (0 = keep only the last)")
    _check(t.steps >= 0, "train.steps", f"{t.steps} must be >= 0 (0 = train.epochs x steps per epoch)")
    _check(math.isfinite(t.budget_min_epochs) and t.budget_min_epochs >= 0, "train.budget_min_epochs",
           f"{t.budget_min_epochs} must be >= 0 (0 = keep the configured model whatever the budget)")
    _check_init(cfg)
    _check(math.isfinite(t.ema) and 0.0 <= t.ema < 1.0, "train.ema",
           f"{t.ema} is out of range: use a decay 0 <= ema < 1, e.g. 0.999 (0 = off)")

    _check(math.isfinite(o.lr) and o.lr > 0, "optim.lr", f"{o.lr} must be a positive number")
    _check(0.0 <= o.momentum < 1.0, "optim.momentum", f"{o.momentum} is out of range: use 0 <= momentum < 1")
    _check(not (o.nesterov and o.momentum == 0), "optim.nesterov", "needs optim.momentum > 0")
    _check(math.isfinite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", f"{o.weight_decay} must be >= 0")
    _check(o.schedule in SCHEDULES, "optim.schedule", f"unknown schedule {o.schedule!r}: use {' | '.join(SCHEDULES)}")
    _check(all(x >= 1 for x in o.milestones) and list(o.milestones) == sorted(set(o.milestones)),
           "optim.milestones", f"{o.milestones} must be increasing positive epochs, e.g. 60,120,160")
    _check(0.0 < o.gamma <= 1.0, "optim.gamma", f"{o.gamma} is out of range: use 0 < gamma <= 1")
    _check(0.0 <= o.warmup_epochs < t.epochs, "optim.warmup_epochs",
           f"{o.warmup_epochs} must be >= 0 and less than train.epochs ({t.epochs})")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"{o.warmup_steps} must be >= 0 (0 = optim.warmup_epochs)")
    _check(not (t.time_budget and not t.steps and o.schedule != "step" and not (o.warmup_epochs or o.warmup_steps)),
           "train.time_budget", f"a budgeted run times its warm-up, and optim.schedule={o.schedule} has none: "
           "add one (e.g. optim.warmup_epochs=1), or use optim.schedule=step")
    _check(math.isfinite(o.warmup_lr) and o.warmup_lr >= 0, "optim.warmup_lr",
           f"{o.warmup_lr} must be >= 0 (0 = a linear warm-up to optim.lr)")
    _check(o.warmup_lr == 0 or o.warmup_epochs > 0 or o.warmup_steps > 0, "optim.warmup_lr",
           f"{o.warmup_lr} needs optim.warmup_epochs > 0 (how long to hold it)")
    _check(0.0 <= o.label_smoothing < 1.0, "optim.label_smoothing", f"{o.label_smoothing} is out of range: use 0 <= x < 1")
    _check(math.isfinite(o.sam_rho) and o.sam_rho >= 0, "optim.sam_rho",
           f"{o.sam_rho} must be >= 0 (0 = plain SGD; Foret et al. use 0.05)")
    _check(not (o.sam_adaptive and o.sam_rho == 0), "optim.sam_adaptive",
           "needs optim.sam_rho > 0 (ASAM takes a larger radius than SAM, e.g. 0.5 to 2)")
    _check(o.base_batch_size >= 1, "optim.base_batch_size", f"{o.base_batch_size} must be >= 1")

    dev = a.device
    _check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
           "accel.device", f"unknown device {dev!r}: use auto, cpu or cuda")
    _check(a.precision in CONFIG_PRECISIONS, "accel.precision",
           f"unknown precision {a.precision!r}: use {' | '.join(CONFIG_PRECISIONS)}")
    _check(a.compile_mode in COMPILE_MODES, "accel.compile_mode",
           f"unknown compile mode {a.compile_mode!r}: use {' | '.join(COMPILE_MODES)}")
    _check(a.threads == "auto" or a.threads.isdigit(), "accel.threads",
           f"accel.threads={a.threads!r}: use auto, 0 (torch's default) or a number of threads")
    _check(a.dist_timeout >= 1, "accel.dist_timeout", f"{a.dist_timeout} must be at least 1 second (e.g. 300 or 5m)")
    _check(lg.every_steps >= 1, "log.every_steps", f"{lg.every_steps} must be >= 1")
    if lg.tensorboard:
        summary_writer_class()  # a missing TensorBoard is one line now, not after the data is loaded
    _check_model(cfg)
