"""Datasets: official formats and image folders -> cached uint8 arrays -> splits.

``load_dataset("cifar10")`` downloads (once) and decodes (once); ``load_dataset(path)`` reads a
local archive, folder or .mat directory. See ``formats`` for the supported layouts.
"""

from __future__ import annotations

import os
from pathlib import Path

from wrn.data.cache import cache_root, cached_decode
from wrn.data.catalog import DATASETS, NAMES, DatasetInfo
from wrn.data.dataset import ArrayDataset, channel_stats, make_splits
from wrn.data.download import fetch_dataset
from wrn.data.formats import read_source
from wrn.errors import UserError


def load_dataset(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    coarse: bool = False,
    mirror: str | None = None,
    quiet: bool | None = None,
) -> dict[str, ArrayDataset]:
    """``{"train", "test"[, "extra"]}`` of a dataset name or path, decoded once and memory-mapped.

    ``coarse`` picks CIFAR-100's coarse labels (also the name ``cifar100-coarse``); ``mirror``
    replaces the download base URL (also ``$WRN_DATA_MIRROR``).
    """
    root = cache_root(cache_dir)
    name = str(source).lower()
    if name in NAMES:
        coarse = coarse or name.endswith("-coarse")
        path = fetch_dataset(name.removesuffix("-coarse"), root, mirror=mirror, quiet=quiet)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(
                f"{source}: no such file or folder: pass a dataset name ({', '.join(NAMES)}) or the path of an "
                "official archive, an image folder, or a .tar/.zip of one"
            )
    options = {"coarse": True} if coarse else {}
    return cached_decode(path, lambda: read_source(path, coarse=coarse), cache_dir=root, options=options, quiet=quiet)


__all__ = ["ArrayDataset", "DatasetInfo", "load_dataset", "make_splits", "channel_stats", "DATASETS", "NAMES"]
