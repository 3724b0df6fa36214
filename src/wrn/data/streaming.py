"""Streaming input for datasets too big for memory (ImageNet): DataLoader workers over files.

Source: an image folder ``root/<split>/<class>/*.jpg`` (ImageNet's val/ must be sorted into class
folders, as for torchvision's ImageFolder), a ``.zip`` of one, or an uncompressed ``.tar`` (its
members are read in place by offset; a compressed tar cannot be read at random). Transforms are
the standard ResNet ones, written with Pillow + numpy: train = random-resized crop (scale 0.08-1,
aspect 3/4-4/3) to 224 + horizontal flip; eval = resize the short side to 256 + centre crop 224.
Batches are uint8 NHWC like ``DeviceLoader``'s; normalise them on the device with
``Augment.normalize``. The randomness of sample i in epoch e comes from (seed, e, i) alone, so
the stream is reproducible whatever the number of workers, and resumable at a step.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from wrn.data.formats import member_split_class, class_order, damaged
from wrn.data.loader import epoch_order, shard_batches
from wrn.errors import UserError


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height): torchvision's RandomResizedCrop sampling."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # Fallback: the largest centred crop whose aspect ratio lies within `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(im, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    from PIL import Image

    left, top, w, h = random_resized_crop_box(im.width, im.height, rng)
    # resize(box=...) crops and resamples in one pass (antialiased when shrinking).
    out = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def eval_transform(im, size: int = 224, resize: int = 256) -> np.ndarray:
    from PIL import Image

    short, long = min(im.size), max(im.size)
    new_long = int(resize * long / short)
    new_size = (resize, new_long) if im.width <= im.height else (new_long, resize)
    im = im.resize(new_size, Image.BILINEAR)
    left = int(round((im.width - size) / 2.0))
    top = int(round((im.height - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _index(source: Path) -> tuple[list[tuple[str, str, object]], str]:
    """[(split, class, locator)] of every image, and the source kind."""
    entries = []
    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                key = member_split_class(os.path.relpath(full, source))
                if key:
                    entries.append((*key, full))
        return entries, "folder"
    name = source.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    key = member_split_class(info.filename)
                    if key and not info.is_dir():
                        entries.append((*key, info.filename))
            return entries, "zip"
        if name.endswith(".tar"):
            with tarfile.open(source, "r:") as tf:
                for member in tf:
                    key = member_split_class(member.name)
                    if key and member.isfile():
                        entries.append((*key, (member.offset_data, member.size)))
            return entries, "tar"
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise damaged(source, e) from e
    raise UserError(
        f"{source}: streaming needs an image folder, a .zip or an uncompressed .tar (compressed tars "
        "cannot be read at random): extract it, or repack it with `tar cf`"
    )


class ImageStream(torch.utils.data.Dataset):
    """One split of an image folder/archive; item i = (uint8 [S, S, 3] array, label)."""

    def __init__(self, source: str | os.PathLike, split: str, *, train: bool, seed: int = 0, image_size: int = 224, resize: int = 256):
        self.source = Path(source).expanduser()
        if not self.source.exists():
            raise UserError(f"{source}: no such file or folder: pass an image folder root/<split>/<class>/*.jpg or a .zip/.tar of one")
        entries, self.kind = _index(self.source)
        self.classes = class_order(c for _, c, _ in entries)
        index = {c: i for i, c in enumerate(self.classes)}
        items = sorted((index[c], str(loc), loc) for s, c, loc in entries if s == split)
        if not items:
            splits = sorted({s for s, _, _ in entries})
            raise UserError(f"{self.source}: no images in split {split!r} (found {splits}): use the layout {split}/<class>/<image>.jpg")
        self.labels = [label for label, _, _ in items]
        self.locators = [loc for _, _, loc in items]
        self.split = split
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.image_size = image_size
        self.resize = resize
        self._handle = None  # opened lazily in each worker process (file handles do not fork well)
        self._handle_pid = -1

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _read(self, loc) -> bytes:
        if self.kind == "folder":
            return Path(loc).read_bytes()
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = zipfile.ZipFile(self.source) if self.kind == "zip" else open(self.source, "rb")
            self._handle_pid = os.getpid()
        if self.kind == "zip":
            return self._handle.read(loc)
        offset, size = loc
        self._handle.seek(offset)
        return self._handle.read(size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        loc = self.locators[i]
        try:
            with Image.open(io.BytesIO(self._read(loc))) as im:
                im = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder failure means a damaged image
            where = loc if self.kind == "folder" else f"{self.source}:{loc if self.kind == 'zip' else 'offset ' + str(loc[0])}"
            raise UserError(f"{where}: cannot decode the image ({e}): replace or remove that file") from None
        if self.train:
            image = train_transform(im, np.random.default_rng([self.seed, self.epoch, i]), self.image_size)
        else:
            image = eval_transform(im, self.image_size, self.resize)
        return image, self.labels[i]


def _collate(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([b[0] for b in batch]))
    return images, torch.tensor([b[1] for b in batch], dtype=torch.int64)


class StreamingLoader:
    """``DeviceLoader``'s interface (``len``, ``epoch(e, start_step)``) over an ``ImageStream``."""

    def __init__(
        self,
        source: str | os.PathLike,
        split: str,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 4,
        drop_last: bool | None = None,
        image_size: int = 224,
        resize: int = 256,
    ):
        self.dataset = ImageStream(source, split, train=train, seed=seed, image_size=image_size, resize=resize)
        self.classes = self.dataset.classes
        self.device = torch.device(device)
        self.shuffle = train
        self.seed = seed
        self.workers = workers
        drop_last = train if drop_last is None else drop_last
        self._bounds = shard_batches(len(self.dataset), batch_size, rank, world_size, drop_last)

    def __len__(self) -> int:
        return len(self._bounds)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)
        batches = [order[a:b].tolist() for a, b in self._bounds[start_step:]]
        self.dataset.epoch = epoch  # workers start below, with this epoch in their copy
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
