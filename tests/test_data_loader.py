"""DeviceLoader: seeded per-epoch permutations, exact resume, disjoint shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wrn.data import ArrayDataset
from wrn.data.loader import DeviceLoader


def traced(n=100) -> ArrayDataset:
    images = np.zeros((n, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return ArrayDataset(images, np.arange(n) % 7, [str(i) for i in range(7)])


def indices(batches) -> list[int]:
    out = []
    for images, labels in batches:
        idx = images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()
        assert torch.equal(labels, idx % 7)  # labels travel with their images
        out += idx.tolist()
    return out


def test_each_epoch_is_a_permutation_and_epochs_differ():
    loader = DeviceLoader(traced(100), 10, device="cpu", seed=0)
    assert len(loader) == 10
    e0, e1 = indices(loader.epoch(0)), indices(loader.epoch(1))
    assert sorted(e0) == sorted(e1) == list(range(100))
    assert e0 != e1
    assert e0 == indices(DeviceLoader(traced(100), 10, device="cpu", seed=0).epoch(0))  # (seed, epoch) only
    assert e0 != indices(DeviceLoader(traced(100), 10, device="cpu", seed=1).epoch(0))


def test_drop_last_and_keep_last():
    assert len(DeviceLoader(traced(105), 10, device="cpu")) == 10
    keep = DeviceLoader(traced(105), 10, device="cpu", drop_last=False, shuffle=False)
    assert len(keep) == 11 and indices(keep.epoch(0)) == list(range(105))
    batches = list(DeviceLoader(traced(105), 10, device="cpu").epoch(3))
    assert all(len(b[0]) == 10 for b in batches) and len(set(indices(batches))) == 100


def test_start_step_resumes_exactly():
    loader = DeviceLoader(traced(100), 8, device="cpu", seed=5)
    full = indices(loader.epoch(4))
    assert indices(loader.epoch(4, start_step=5)) == full[5 * 8 :]


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_and_cover_the_epoch(world_size):
    ds = traced(120)
    shards = [indices(DeviceLoader(ds, 10, device="cpu", seed=2, rank=r, world_size=world_size).epoch(1)) for r in range(world_size)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == (120 // (10 * world_size)) * 10 * world_size
    # One global permutation: W ranks of batch B see, step by step, what one process of batch B*W sees.
    single = indices(DeviceLoader(ds, 10 * world_size, device="cpu", seed=2).epoch(1))
    steps = len(shards[0]) // 10
    for s in range(steps):
        together = [i for r in range(world_size) for i in shards[r][s * 10 : (s + 1) * 10]]
        assert together == single[s * 10 * world_size : (s + 1) * 10 * world_size]


def test_uneven_eval_shards_cover_everything():
    ds = traced(25)
    shards = [indices(DeviceLoader(ds, 4, device="cpu", shuffle=False, drop_last=False, rank=r, world_size=3).epoch(0)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(25))


def test_read_only_memmap_source(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, traced(30).images)
    ds = ArrayDataset(np.load(path, mmap_mode="r"), np.zeros(30), ["a"])
    images, _ = next(iter(DeviceLoader(ds, 5, device="cpu").epoch(0)))
    assert images.dtype == torch.uint8 and images.shape == (5, 2, 2, 3)


def test_too_small_for_one_batch():
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(traced(10), 8, device="cpu", world_size=2)
