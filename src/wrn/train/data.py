"""A config's data for a run: datasets, splits, loaders and the normalisation that turns a batch
into model input.

    data = build_data(cfg, device)            # loaders["train" | "val" | "test"], augment, classes
    x = data.augment(images, generator)       # [B, 3, H, W] float32, normalised, augmented

Small-image datasets (CIFAR, SVHN) live whole on the device as uint8 (``DeviceLoader``);
ImageNet-size data streams from disk through DataLoader workers (``StreamingLoader``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wrn.data import NAMES, channel_stats, load_dataset, make_splits, zca
from wrn.data.augment import Augment
from wrn.data.catalog import DATASETS
from wrn.data.policies import build_policy
from wrn.data.loader import DeviceLoader
from wrn.data.streaming import StreamingLoader
from wrn.errors import UserError
from wrn.train.config import Config


@dataclass
class Data:
    """Loaders (``len``, ``epoch(e, start_step)`` -> uint8 NHWC batches on the device), the
    augmentation/normalisation that turns a batch into model input, and what the run reports."""
    loaders: dict[str, Any]
    augment: Any
    classes: list[str]
    mean: list[float] | None  # None with ZCA whitening, which replaces mean/std
    std: list[float] | None
    train_images: int
    whitening: zca.Whitening | None = None  # data.normalize=zca: saved in the run dir as ZCA_FILE
    input_size: list[int] | None = None  # [H, W] the model sees (recorded for wrn predict)

    def pick(self, split: str) -> tuple[Any, Any]:
        """(loader, augment) of one evaluation split."""
        if split not in self.loaders:
            raise UserError(f"--split {split}: the run has no {split} images (data.val_size=0): use --split test")
        return self.loaders[split], self.augment


ZCA_FILE = "zca.safetensors"  # in the run directory, beside config.yaml


def find_whitening(cfg: Config, path: Path) -> zca.Whitening | None:
    """The run's fitted ZCA whitening (data.normalize=zca) from its run directory or a checkpoint
    inside it (RUN/checkpoint, RUN/checkpoints/epoch-N); None for other normalisations."""
    if cfg.data.normalize != "zca":
        return None
    for folder in (path, *path.parents[:2]):
        if (folder / ZCA_FILE).is_file():
            return zca.load(folder / ZCA_FILE)
    return zca.load(path / ZCA_FILE)  # the one-line "missing" error


def _normalization(cfg: Config, train_split) -> tuple[list[float], list[float]]:
    if cfg.data.mean is not None and cfg.data.std is not None:  # explicit constants win
        return list(cfg.data.mean), list(cfg.data.std)
    if cfg.data.normalize == "none":  # pixels / 255 (the paper's SVHN)
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if cfg.data.normalize == "paper" or train_split is None:  # (streamed data: no pass over it)
        info = DATASETS.get(cfg.data.name)
        info = info if info is not None and info.mean is not None else DATASETS["imagenet"]
        return list(info.mean), list(info.std)
    mean, std = channel_stats(train_split)
    return [float(m) for m in mean], [float(s) for s in std]


def load_splits(cfg: Config) -> dict[str, Any]:
    """train / val / test ArrayDatasets for the config (the val split is carved from train)."""
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
    augment = Augment(mean, std, crop_padding=0, flip=False, channels_last=cfg.accel.channels_last)
    first = next(iter(loaders.values()))
    n = len(loaders["train"].dataset) if "train" in loaders else 0
    return Data(loaders, augment, list(first.classes), mean, std, n, input_size=[cfg.data.image_size] * 2)


def _check_classes(cfg: Config, train_split, classes: list[str]) -> None:
    """Labels a classifier can learn, checked before any work: >= 2 classes, each with training
    images, all within model.num_classes (else the loss fails mid-run with an index error)."""
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
               stats: tuple[list[float], list[float]] | None = None,
               whitening: zca.Whitening | None = None) -> Data:
    """Loaders for the requested splits (evaluation splits sharded over processes under torchrun).
    ``stats`` (mean, std) or ``whitening`` override the normalisation: evaluation and resume
    reuse the run's own instead of computing it again."""
    if cfg.data.streaming:
        return _streaming_data(cfg, device, rank, world_size, splits, stats)
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
    if cfg.data.normalize == "zca":
        whitening = whitening or zca.fit(train.images, cfg.data.zca_epsilon)
        mean = std = None
    else:
        mean, std = stats or _normalization(cfg, train)
    augment = Augment(mean, std, crop_padding=4 if cfg.data.augment else 0, flip=cfg.data.augment,
                      cutout=cfg.data.cutout, channels_last=cfg.accel.channels_last, whiten=whitening,
                      policy=build_policy(cfg.data.policy, cfg.data.policy_ops, cfg.data.policy_magnitude))
    loaders: dict[str, Any] = {}
    if "train" in splits:
        loaders["train"] = DeviceLoader(train, cfg.train.batch_size // world_size, device=device, shuffle=True,
                                        drop_last=True, seed=cfg.train.seed, rank=rank, world_size=world_size)
    for name in ("val", "test"):
        if name in splits and len(arrays[name]):
            loaders[name] = DeviceLoader(arrays[name], cfg.train.eval_batch_size, device=device, shuffle=False,
                                         drop_last=False, rank=rank, world_size=world_size)
    return Data(loaders, augment, list(train.classes), mean, std, len(train), whitening,
                list(train.images.shape[1:3]))


def num_images(loader) -> int:
    """Images in a loader's split (device-resident or streamed)."""
    return getattr(loader, "num_samples", None) or len(loader.dataset)


def data_source(data: str) -> tuple[str | None, str | None]:
    """(dataset name, path) for ``--data X`` (every command that reads data takes it): an absolute
    path when X exists (or looks like one), else a dataset name; either is checked."""
    if os.path.exists(data) or os.sep in data or data.startswith("."):
        if not os.path.exists(data):
            raise UserError(f"--data {data!r} does not exist: check the path, or give a name ({', '.join(NAMES)})")
        return None, os.path.abspath(data)
    if data not in NAMES:
        raise UserError(f"--data {data!r} is neither a file/folder nor a dataset name: use a path or one of "
                        f"{', '.join(NAMES)}")
    return data, None


def data_overrides(data: str | None) -> list[str]:
    """The config overrides for ``--data X`` (none without it)."""
    if data is None:
        return []
    name, path = data_source(data)
    return [f"data.path={path}"] if path else [f"data.name={name}", "data.path=none"]


def other_data(cfg: Config, source: str, split: str, classes: list[str] | None, device: torch.device,
               stats: tuple[list[float], list[float]] | None,
               whitening: zca.Whitening | None = None) -> tuple[DeviceLoader, Augment]:
    """(loader, augment) for evaluating a run on another dataset laid out with its classes: the
    ``split`` of ``source`` (or its only split). Settings that only shape training (subset, val
    split, extra) do not apply; labels follow the run's class order (matched by name)."""
    name, path = data_source(source)  # checks the path or name
    datasets = load_dataset(path or name, cache_dir=cfg.data.cache_dir)
    if split not in datasets:
        if len(datasets) != 1:
            raise UserError(f"{source}: no {split!r} split (it has {', '.join(sorted(datasets))}): "
                            f"use --split with one of them")
        split = next(iter(datasets))
    ds = datasets[split]
    if classes is not None and list(ds.classes) != list(classes):
        missing = sorted(set(ds.classes) - set(classes))
        if missing:
            raise UserError(f"{source}: class {missing[0]!r} is not one of the run's {len(classes)} classes "
                            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): "
                            "lay the data out with the run's class names")
        order = np.array([classes.index(c) for c in ds.classes])
        ds = type(ds)(ds.images, order[np.asarray(ds.labels)], list(classes))
    mean, std = (None, None) if whitening is not None else (stats or _normalization(cfg, None))
    augment = Augment(mean, std, crop_padding=0, flip=False, channels_last=cfg.accel.channels_last, whiten=whitening)
    loader = DeviceLoader(ds, cfg.train.eval_batch_size, device=device, shuffle=False, drop_last=False)
    return loader, augment
