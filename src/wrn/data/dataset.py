"""In-memory datasets of small images, the train/val/test splits, and per-channel statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wrn.errors import UserError

@dataclass
class ArrayDataset:
    """Images ``uint8 [N, H, W, 3]`` (often a read-only memory map), labels ``int64 [N]``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be [N={len(self.images)}], got {self.labels.shape}")
        self.classes = list(self.classes)
        # An out-of-range label would only surface mid-training as an index error in the loss.
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = self.labels.min() if self.labels.min() < 0 else self.labels.max()
            raise ValueError(f"label {bad} is out of range for {len(self.classes)} classes (labels must be 0..{len(self.classes) - 1})")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ArrayDataset(images={tuple(self.images.shape)}, classes={len(self.classes)})"

    def subset(self, indices) -> ArrayDataset:
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(np.asarray(self.images[indices]), self.labels[indices], self.classes)


def _stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices with the class proportions of ``labels`` (exact total, near-exact per class)."""
    order = rng.permutation(len(labels))
    # Rank of each shuffled index within its class, as a fraction of the class size: taking the
    # k smallest fractions takes the same share of every class.
    shuffled = labels[order]
    rank = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(shuffled):
        where = np.flatnonzero(shuffled == c)
        rank[where] = (np.arange(len(where)) + rng.random(len(where))) / len(where)
    return np.sort(order[np.argsort(rank, kind="stable")[:k]])


def make_splits(
    datasets: dict[str, ArrayDataset],
    *,
    val_size: int,
    subset: int,
    seed: int,
    use_extra: bool = False,
) -> dict[str, ArrayDataset]:
    """``train``/``val``/``test`` from what ``load_dataset`` returned.

    The validation split is carved from train (stratified, seeded); ``subset`` K keeps K of the
    remaining training images (0 = all); ``use_extra`` first appends SVHN's extra split to train
    (the paper's protocol). The test split is passed through untouched.
    """
    if "train" not in datasets or "test" not in datasets:
        raise UserError(f"the dataset has splits {sorted(datasets)}: it needs 'train' and 'test' folders or files")
    train, test = datasets["train"], datasets["test"]
    if use_extra:
        if "extra" not in datasets:
            raise UserError("data.use_extra needs a dataset with an 'extra' split (SVHN): set it to false")
        extra = datasets["extra"]
        train = ArrayDataset(np.concatenate([train.images, extra.images]), np.concatenate([train.labels, extra.labels]), train.classes)
    if val_size < 0 or subset < 0:
        raise UserError(f"data.val_size ({val_size}) and data.subset ({subset}) must be >= 0")
    if val_size >= len(train):
        raise UserError(f"data.val_size={val_size} leaves no training images out of {len(train)}: use a smaller value")
    rng = np.random.default_rng([seed, 0x5B1])
    rest = np.arange(len(train))
    if val_size:
        val_idx = _stratified_pick(train.labels, val_size, rng)
        rest = np.setdiff1d(rest, val_idx, assume_unique=True)
        val = train.subset(val_idx)
    else:
        val = ArrayDataset(np.zeros((0, *train.images.shape[1:]), np.uint8), np.zeros(0, np.int64), train.classes)
    if subset:
        if subset > len(rest):
            raise UserError(f"data.subset={subset} is more than the {len(rest)} training images left after validation: use a smaller value or 0 (all)")
        rest = rest[_stratified_pick(train.labels[rest], subset, rng)]
    if len(rest) < len(train):
        train = train.subset(rest)
    return {"train": train, "val": val, "test": test}


def channel_stats(ds: ArrayDataset, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of ``ds`` on the [0, 1] scale (population std over all pixels)."""
    if len(ds) == 0:
        raise UserError("cannot compute channel statistics of an empty split")
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(ds), chunk):
        # float64 sums per chunk: exact for uint8 data, and memory stays bounded for memory maps.
        block = np.asarray(ds.images[start : start + chunk], dtype=np.float64).reshape(-1, 3)
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
    count = ds.images[..., 0].size
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(float(m / 255) for m in mean), tuple(float(s / 255) for s in std)
