"""Validation split, subset, SVHN train+extra, channel statistics."""

from __future__ import annotations

import numpy as np
import pytest

from wrn.data import ArrayDataset, catalog, channel_stats, make_splits
from wrn.errors import UserError


def toy(n=1000, classes=10, seed=0, value_from_index=True) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 4, 4, 3), np.uint8)
    if value_from_index:  # pixel (0, 0, :) encodes the index so images can be traced
        images[:, 0, 0, 0] = np.arange(n) % 256
        images[:, 0, 0, 1] = np.arange(n) // 256
    labels = rng.permutation(np.arange(n) % classes)
    return ArrayDataset(images, labels, [str(c) for c in range(classes)])


def ids(ds: ArrayDataset) -> set[int]:
    return set((ds.images[:, 0, 0, 0].astype(int) + 256 * ds.images[:, 0, 0, 1].astype(int)).tolist())


def test_val_is_carved_from_train_stratified_and_seeded():
    data = {"train": toy(), "test": toy(50, seed=1)}
    s = make_splits(data, val_size=100, subset=0, seed=0)
    assert len(s["train"]) == 900 and len(s["val"]) == 100
    assert ids(s["train"]).isdisjoint(ids(s["val"])) and len(ids(s["train"]) | ids(s["val"])) == 1000
    assert np.bincount(s["val"].labels).tolist() == [10] * 10
    assert s["test"] is data["test"]  # untouched
    again = make_splits(data, val_size=100, subset=0, seed=0)
    other = make_splits(data, val_size=100, subset=0, seed=1)
    assert ids(again["val"]) == ids(s["val"]) and ids(other["val"]) != ids(s["val"])


def test_subset_after_val_and_zero_means_all():
    data = {"train": toy(), "test": toy(50)}
    s = make_splits(data, val_size=100, subset=200, seed=3)
    assert len(s["train"]) == 200 and ids(s["train"]).isdisjoint(ids(s["val"]))
    assert np.bincount(s["train"].labels).tolist() == [20] * 10
    full = make_splits(data, val_size=0, subset=0, seed=3)
    assert full["train"] is data["train"] and len(full["val"]) == 0
    assert full["val"].images.shape[1:] == (4, 4, 3)


def test_use_extra_appends_svhn_extra():
    data = {"train": toy(100), "test": toy(10), "extra": toy(300, seed=5, value_from_index=False)}
    s = make_splits(data, val_size=40, subset=0, seed=0, use_extra=True)
    assert len(s["train"]) + len(s["val"]) == 400
    with pytest.raises(UserError, match="extra"):
        make_splits({"train": toy(), "test": toy(5)}, val_size=0, subset=0, seed=0, use_extra=True)


def test_bad_sizes_are_user_errors():
    data = {"train": toy(100), "test": toy(10)}
    with pytest.raises(UserError, match="val_size"):
        make_splits(data, val_size=100, subset=0, seed=0)
    with pytest.raises(UserError, match="subset"):
        make_splits(data, val_size=10, subset=91, seed=0)
    with pytest.raises(UserError, match="test"):
        make_splits({"train": toy(100)}, val_size=10, subset=0, seed=0)


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (300, 5, 5, 3), dtype=np.uint8), np.zeros(300), ["x"])
    mean, std = channel_stats(ds, chunk=64)
    x = ds.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-7)


def test_paper_constants_are_the_true_cifar10_std():
    info = catalog.get("cifar10")
    mean, std = info.mean, info.std
    assert mean == (0.4914, 0.4822, 0.4465) and std == (0.2470, 0.2435, 0.2616)
