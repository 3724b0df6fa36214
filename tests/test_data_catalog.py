"""The dataset catalog: each dataset's facts once, and the readers/downloader agree with it."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_formats import write_cifar10_archive, write_svhn

import wrn.data
from wrn.data import catalog, load_dataset
from wrn.data.download import fetch_dataset
from wrn.data.formats import SVHN_FILES
from wrn.errors import UserError


def test_published_facts():
    c10, c100, svhn, inet = (catalog.get(n) for n in ("cifar10", "cifar100", "svhn", "imagenet"))
    assert (c10.short, c100.short, svhn.short) == ("c10", "c100", "svhn")
    assert (c10.num_classes, c100.num_classes, svhn.num_classes, inet.num_classes) == (10, 100, 10, 1000)
    assert len(set(c100.classes)) == 100 and len(c100.coarse_classes) == 20
    # The python-version meta files list both class sets alphabetically; label i is the i-th name.
    assert list(c100.classes) == sorted(c100.classes) and list(c100.coarse_classes) == sorted(c100.coarse_classes)
    assert c10.splits == c100.splits == {"train": 50_000, "test": 10_000}
    assert svhn.splits["train"] + svhn.splits["extra"] == 604_388  # the paper's SVHN training set
    assert c10.std == (0.2470, 0.2435, 0.2616)  # not the often-copied (0.2023, 0.1994, 0.2010)
    assert c100.mean == (0.5071, 0.4865, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)
    assert inet.mean == (0.485, 0.456, 0.406) and inet.std == (0.229, 0.224, 0.225)
    assert svhn.mean is None and svhn.std is None  # the paper divides SVHN pixels by 255, nothing more
    assert not inet.files  # ImageNet needs a licence: never downloaded


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown dataset 'cifar-10': did you mean 'cifar10'\?") as err:
        catalog.get("cifar-10")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="known datasets: cifar10, cifar100, svhn, imagenet"):
        catalog.get("mnist")


def test_names_and_views_derive_from_the_catalog():
    assert wrn.data.NAMES == catalog.NAMES
    assert set(catalog.NAMES) == {"cifar10", "cifar100", "cifar100-coarse", "svhn"}
    assert SVHN_FILES == {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def test_readers_give_the_catalog_classes(tmp_path):
    rng = np.random.default_rng(0)
    path, _ = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", rng)
    assert load_dataset(path, cache_dir=tmp_path / "c")["train"].classes == list(catalog.get("cifar10").classes)
    write_svhn(tmp_path / "svhn", rng)
    assert load_dataset(tmp_path / "svhn", cache_dir=tmp_path / "c")["test"].classes == list(catalog.get("svhn").classes)


def test_imagenet_is_not_downloadable(tmp_path):
    with pytest.raises(UserError, match="imagenet cannot be downloaded: pass the path of a local copy"):
        fetch_dataset("imagenet", tmp_path)
    assert list(tmp_path.iterdir()) == []
