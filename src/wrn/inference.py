"""Classify images with a trained run: ``wrn.predict(run_or_model, images)`` and `wrn predict`.

    preds = wrn.predict("runs/quick-wrn-16-4", ["cat.jpg", "photos/", "more.zip"])
    preds.top(3)      # [[("cat", 0.91), ("dog", 0.05), ("frog", 0.02)], ...] per image
    preds.probs       # float32 [N, classes] softmax

Images are prepared the way the run's evaluation prepared its own: for a run trained on
in-memory arrays (CIFAR, SVHN, image folders) an image at the run's input size goes straight in,
any other is resized (shorter side to the input size, bilinear, antialiased) and centre-cropped;
a streaming run (ImageNet) uses its loader's evaluation transform (short side 256, centre 224).
Then the run's normalisation, precision and memory format, in batches on the CPU or a GPU.
Unreadable files (not an image, truncated) are skipped and listed in ``Predictions.skipped``,
or raise a ``UserError`` with ``strict=True``.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import itertools
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from wrn.data.augment import Augment
from wrn.data.formats import ARCHIVE_SUFFIXES, IMAGE_EXTENSIONS
from wrn.data.streaming import eval_transform
from wrn.errors import UserError
from wrn.train import accel
from wrn.train.checkpoint import CHECKPOINT, KEPT, OLD, find_checkpoint, load_checkpoint
from wrn.train.config import INFERENCE_KEYS, Config, apply_overrides, config_from_dict, validate
from wrn.train.data import find_whitening
from wrn.train.step import make_eval_step

DEFAULT_BATCH = 256  # for a bare model (a run uses its own train.eval_batch_size)


@dataclass
class Predictions:
    """One row per classified image, in input order (folders sorted by path)."""
    names: list[str]  # file path, "archive:member", or "#i" for the i-th in-memory image
    probs: np.ndarray  # float32 [N, num_classes]: softmax (the mean over the flips with TTA)
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why) of unreadable files

    def __len__(self) -> int:
        return len(self.names)

    @property
    def labels(self) -> list[str]:
        """The most probable class of each image."""
        return [self.classes[i] for i in self.probs.argmax(1)] if len(self) else []

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable (class, probability) of each image, most probable first."""
        k = max(1, min(k, len(self.classes)))
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(self.probs, order)]


@dataclass
class Predictor:
    """A model ready to classify: device, eval step, and how its inputs must look."""
    model: nn.Module
    step: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    normalize: Any  # wrn.data.augment.Augment: the run's mean/std normalisation or ZCA whitening
    image_size: int
    streaming: bool
    classes: list[str]
    batch_size: int


def input_size(model: nn.Module, state: dict[str, Any]) -> tuple[int, bool]:
    """(input size, streaming) of a checkpoint: the size recorded in state.json, else the
    streaming crop (data.image_size), else the model's own default (32 for CIFAR-style nets)."""
    data = (state.get("config") or {}).get("data") or {}
    streaming = bool(data.get("streaming"))
    size = state.get("input_size")  # [H, W] of the training images, where the run recorded it
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    if not isinstance(size, int):
        default = getattr(model, "default_input_size", 32)
        size = int(data["image_size"]) if streaming and "image_size" in data else default
    return size, streaming


def load_predictor(model_or_run: Any, *, device: str | None = None, precision: str | None = None,
                   batch_size: int | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, classes: Sequence[str] | None = None,
                   image_size: int | None = None, tta: bool = False, overrides: Sequence[str] = (),
                   weights: str | None = None) -> Predictor:
    """From a run directory / checkpoint path, a ``(model, state)`` pair as ``wrn.load_checkpoint``
    returns, or a bare model with its ``mean``/``std`` (and optionally ``classes``, ``image_size``).
    ``tta``: each prediction averages the image's and its horizontal mirror's. ``overrides``:
    ``accel.*`` ``key=value`` texts, as `wrn eval` takes them (``device``/``precision`` win).
    ``weights``: a run's ``ema`` or ``raw`` weights (default: the moving average where it has one)."""
    ckpt = None
    if weights is not None and not isinstance(model_or_run, (str, os.PathLike)):
        raise UserError("weights= picks a run's ema or raw weights: pass the run directory, or load the model "
                        "with wrn.load_checkpoint(run, weights=...)")
    if isinstance(model_or_run, (str, os.PathLike)):
        run = Path(model_or_run)
        if (run / "config.yaml").is_file() and not any((run / d).exists() for d in (CHECKPOINT, OLD, KEPT)):
            raise UserError(f"{run}: the run has saved no checkpoint yet: train it further "
                            f"(wrn train --resume {run}) or give another run")
        ckpt = find_checkpoint(run)
        model_or_run = load_checkpoint(ckpt, weights=weights)
    if isinstance(model_or_run, tuple) and len(model_or_run) == 2 and isinstance(model_or_run[0], nn.Module):
        model, state = model_or_run
    elif isinstance(model_or_run, nn.Module):
        model, state = model_or_run, {}
    else:
        raise TypeError(f"model_or_run: expected a run directory, (model, state) or an nn.Module, "
                        f"got {type(model_or_run).__name__}")
    cfg = state.get("config") or {}
    norm = state.get("normalize") or {}
    mean, std = mean if mean is not None else norm.get("mean"), std if std is not None else norm.get("std")
    whitening = None
    if (cfg.get("data") or {}).get("normalize") == "zca" and mean is None:  # the run's fitted ZCA, not mean/std
        if ckpt is None:
            raise UserError("predict: this run whitens its inputs (data.normalize=zca): pass its run directory, "
                            "where the fitted whitening is saved")
        whitening = find_whitening(config_from_dict(cfg), ckpt)
    elif mean is None or std is None:
        raise UserError("predict: a bare model needs its normalisation: pass mean= and std= (a run's "
                        "state.json holds them under 'normalize'), or pass the run directory")
    size, streaming = input_size(model, state)
    if whitening is not None and not state.get("input_size"):
        size = whitening.shape[0]  # fitted on the training images' (H, W, C)
    num_classes = getattr(model, "num_classes", None)
    classes = list(classes if classes is not None else state.get("classes") or
                   [str(i) for i in range(num_classes or 0)])
    given = _accel_overrides(cfg, overrides)
    accel_cfg = {**(cfg.get("accel") or {}), **given}
    if device is None and "device" in given:
        device = given["device"]
    if device is None:  # a run: the GPU when present; a model: where its weights already are
        param = next(model.parameters(), None)
        dev = accel.resolve_device("auto") if state or param is None else param.device
    else:
        dev = accel.resolve_device(device)
    channels_last = bool(accel_cfg.get("channels_last"))
    model = accel.prepare_model(model, dev, channels_last)
    batch = batch_size if batch_size is not None else (cfg.get("train") or {}).get("eval_batch_size") or DEFAULT_BATCH
    if batch < 1:
        raise UserError(f"--batch-size {batch} must be >= 1")
    # "auto" is what the run recorded when it trained, else this device's fast precision, as `wrn eval` does.
    precision = accel.resolve_precision(precision or accel_cfg.get("precision", "fp32"), dev,
                                        (state.get("decisions") or {}).get("precision"))
    eval_step = make_eval_step(model, precision=precision, device=dev, flip=tta)
    normalize = Augment(None if whitening else mean, None if whitening else std, whiten=whitening, crop_padding=0,
                        flip=False, channels_last=channels_last)  # as evaluation's
    return Predictor(model, eval_step, dev, normalize, image_size or size, streaming, classes, batch)


def _accel_overrides(cfg: dict, overrides: Sequence[str]) -> dict[str, Any]:
    """The ``accel.*`` values ``overrides`` set on the run's config (``cfg``: its saved form),
    checked as `wrn eval` checks them: {name: value} of the keys given."""
    if not overrides:
        return {}
    full = config_from_dict(cfg) if cfg else Config()
    keys = apply_overrides(full, overrides, INFERENCE_KEYS, refuse=lambda key, _: (
        f"{key} does not apply to prediction (the checkpoint fixes it): use accel.* keys"))
    validate(full)
    return {key.partition(".")[2]: getattr(full.accel, key.partition(".")[2]) for key in keys}


# -- inputs --------------------------------------------------------------------------------------

def _is_image_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    hidden = any(p.startswith(".") and p not in (".", "..") or p == "__MACOSX" for p in parts)
    return not hidden and name.lower().endswith(IMAGE_EXTENSIONS)


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(archive:member, bytes) of the image members, read front to back without extracting."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and _is_image_name(info.filename):
                        yield f"{path}:{info.filename}", zf.read(info)
            return
        with tarfile.open(path, "r|*") as tf:  # stream mode: one pass over a compressed tar
            for member in tf:
                if member.isfile() and _is_image_name(member.name):
                    f = tf.extractfile(member)
                    yield f"{path}:{member.name}", f.read() if f else b""
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: damaged or truncated archive ({why}): download or pack it again") from None


def _expand(item: Any, in_memory: Iterator[int]) -> Iterator[tuple[str, Any]]:
    """(name, source) pairs: source is a path, bytes, a PIL image or an HxWx3 uint8 array;
    in-memory images are named "#i" with i drawn from ``in_memory`` (0, 1, ... over the call)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
                for f in sorted(filenames):
                    if _is_image_name(f):
                        yield os.path.join(dirpath, f), os.path.join(dirpath, f)
        elif path.name.lower().endswith(ARCHIVE_SUFFIXES):
            yield from _archive_members(path)
        else:
            yield str(path), str(path)
        return
    if isinstance(item, torch.Tensor):
        item = item.cpu().numpy()
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (3, 4) or item.shape[-1] != 3:
            raise UserError(f"images: an array must be uint8 [N, H, W, 3] or [H, W, 3], got {item.dtype} "
                            f"{list(item.shape)}: convert it (e.g. (x * 255).astype(np.uint8))")
        for image in item if item.ndim == 4 else item[None]:
            yield f"#{next(in_memory)}", image
        return
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        yield f"#{next(in_memory)}", item
        return
    raise UserError(f"images: cannot read a {type(item).__name__}: give paths, PIL images or a uint8 NHWC array")


def _check_paths(images: Iterable[Any]) -> None:
    for item in images:
        if isinstance(item, (str, os.PathLike)) and not Path(item).exists():
            raise UserError(f"{item}: no such file or folder: give image files, folders or .tar/.zip archives of them")


def prepare(image: Any, size: int, streaming: bool) -> np.ndarray:
    """One image -> uint8 [size, size, 3], as the run's evaluation prepared its images."""
    from PIL import Image  # Pillow: loaded when an image is read

    if isinstance(image, np.ndarray):
        if image.shape[:2] == (size, size) and not streaming:
            return np.ascontiguousarray(image)
        image = Image.fromarray(image)
    elif isinstance(image, (str, bytes)):
        with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as im:
            image = im.convert("RGB")  # decodes the whole file: a truncated one fails here
    if image.mode != "RGB":
        image = image.convert("RGB")
    if streaming:
        return eval_transform(image, size)
    if image.size == (size, size):
        return np.asarray(image, dtype=np.uint8)
    return eval_transform(image, size, resize=size)


def _prepare_or_reason(source: Any, size: int, streaming: bool) -> np.ndarray | str:
    try:
        return prepare(source, size, streaming)
    except Exception as e:  # noqa: BLE001 - any decoder failure means an unreadable image
        return f"cannot read the image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


# -- inference -----------------------------------------------------------------------------------

def _chunks(pairs: Iterator[tuple[str, Any]], n: int) -> Iterator[list[tuple[str, Any]]]:
    chunk: list[tuple[str, Any]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _probabilities(p: Predictor, batch: np.ndarray) -> np.ndarray:
    x = p.normalize.normalize(torch.from_numpy(batch).to(p.device))  # [B, 3, S, S] float32, model's layout
    return torch.softmax(p.step(x), dim=1).cpu().numpy()


def predict(model_or_run: Any, images: Any, *, tta: bool = False, strict: bool = False,
            device: str | None = None, batch_size: int | None = None, precision: str | None = None,
            overrides: Sequence[str] = (), on_skip: Callable[[str, str], None] | None = None,
            weights: str | None = None, **model_info: Any) -> Predictions:
    """Class probabilities of ``images`` under a trained model.

    ``model_or_run``: a run directory or checkpoint, ``wrn.load_checkpoint(...)``'s (model, state),
    or a bare model with ``mean=``, ``std=`` (per channel, on the [0, 1] pixel scale) and optionally
    ``classes=``, ``image_size=``. ``images``: a path
    (image file, folder searched recursively, .tar/.tar.gz/.tar.xz/.zip), a PIL image, a uint8
    [N, H, W, 3] array or tensor, or a list of these. ``tta`` averages the softmax of each image
    and its horizontal flip. ``overrides``: ``accel.*`` ``key=value`` texts (e.g.
    ``accel.precision=fp32``); ``device`` and ``precision`` win over them. Unreadable files are skipped (``on_skip(name, why)`` is called, and
    they are listed in ``skipped``), or raise a ``UserError`` with ``strict``. ``weights``: a run's
    ``"ema"`` (moving average, train.ema) or ``"raw"`` weights; default: the moving average where
    the run has one.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    _check_paths(items)
    p = load_predictor(model_or_run, device=device, precision=precision, batch_size=batch_size, tta=tta,
                       overrides=overrides, weights=weights, **model_info)
    was_training = p.model.training
    p.model.eval()
    names: list[str] = []
    probs: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    in_memory = itertools.count()
    pairs = (pair for item in items for pair in _expand(item, in_memory))
    workers = min(8, os.cpu_count() or 1)
    try:
        with cf.ThreadPoolExecutor(workers) as pool:  # Pillow decodes and resizes without the GIL
            for chunk in _chunks(pairs, p.batch_size):
                prepared = pool.map(lambda pair: _prepare_or_reason(pair[1], p.image_size, p.streaming), chunk)
                batch, batch_names = [], []
                for (name, _), result in zip(chunk, prepared):
                    if isinstance(result, str):
                        if strict:
                            raise UserError(f"{name}: {result}: remove or replace it (or drop --strict to skip it)")
                        skipped.append((name, result))
                        if on_skip:
                            on_skip(name, result)
                    else:
                        batch.append(result)
                        batch_names.append(name)
                if batch:
                    probs.append(_probabilities(p, np.stack(batch)))
                    names += batch_names
    finally:
        p.model.train(was_training)
    if not names and not skipped:
        raise UserError(f"no images found in {', '.join(str(i) for i in items[:3])}: give PNG/JPEG files, "
                        "folders or .tar/.zip archives of them")
    out = np.concatenate(probs) if probs else np.zeros((0, len(p.classes)), np.float32)
    return Predictions(names, out.astype(np.float32, copy=False), p.classes, skipped)
