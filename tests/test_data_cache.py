"""Decoded cache: reused while the source is unchanged, rebuilt when it changes, never partial."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_data_formats import write_cifar10_archive, write_image_tree, write_svhn

from wrn.data import load_dataset
from wrn.data import cache as cache_mod
from wrn.errors import UserError


def entries(cache_dir):
    decoded = cache_dir / "decoded"
    return sorted(p.name for p in decoded.iterdir()) if decoded.is_dir() else []


def test_second_load_is_memory_mapped_from_the_cache(tmp_path, monkeypatch):
    path, _ = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(0))
    first = load_dataset(path, cache_dir=tmp_path / "c")
    assert isinstance(first["train"].images, np.memmap)
    monkeypatch.setattr("wrn.data.formats.read_source", None)  # a decode would now fail
    monkeypatch.setattr("wrn.data.read_source", lambda *a, **k: pytest.fail("decoded twice"))
    second = load_dataset(path, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(first["train"].images, second["train"].images)
    assert len(entries(tmp_path / "c")) == 1


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WRN_CACHE", str(tmp_path / "envcache"))
    write_svhn(tmp_path / "svhn", np.random.default_rng(1))
    load_dataset(tmp_path / "svhn")
    assert len(entries(tmp_path / "envcache")) == 1
    assert cache_mod.cache_root(None) == tmp_path / "envcache"
    monkeypatch.delenv("WRN_CACHE")
    assert cache_mod.cache_root(None) == cache_mod.Path.home() / ".cache" / "wrn"


def test_changed_source_is_decoded_again(tmp_path):
    root = tmp_path / "tree"
    write_image_tree(root, np.random.default_rng(2))
    before = load_dataset(root, cache_dir=tmp_path / "c")
    write_image_tree(root, np.random.default_rng(3))  # same files, new pixels
    for p in root.rglob("*.png"):
        os.utime(p, ns=(p.stat().st_mtime_ns + 10**9,) * 2)
    after = load_dataset(root, cache_dir=tmp_path / "c")
    assert not np.array_equal(before["train"].images, after["train"].images)
    assert len(entries(tmp_path / "c")) == 1  # the stale entry was dropped


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_cifar_archive(tmp_path, damage):
    path, _ = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:100] + b"\x00" * 5000 + data[5100:])
    with pytest.raises(UserError, match="cifar-10-python.tar.gz") as err:
        load_dataset(path, cache_dir=tmp_path / "c")
    assert "\n" not in str(err.value)
    assert entries(tmp_path / "c") == []


def test_truncated_svhn_mat(tmp_path):
    write_svhn(tmp_path / "svhn", np.random.default_rng(5))
    mat = tmp_path / "svhn" / "train_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:-50])
    with pytest.raises(UserError, match="train_32x32.mat"):
        load_dataset(tmp_path / "svhn", cache_dir=tmp_path / "c")
    assert entries(tmp_path / "c") == []
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"MATLAB 7.3 MAT-file, HDF5")
    with pytest.raises(UserError, match="test_32x32.mat"):
        load_dataset(tmp_path / "svhn" / "test_32x32.mat", cache_dir=tmp_path / "c")


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_dataset(tmp_path / "nope", cache_dir=tmp_path / "c")
    odd = tmp_path / "data.csv"
    odd.write_text("1,2")
    with pytest.raises(UserError, match="unknown dataset format"):
        load_dataset(odd, cache_dir=tmp_path / "c")
