"""Decoded-array cache: a source is decoded once to .npy files, later loads memory-map them.

An entry is a folder ``<cache>/decoded/<name>-<key>/`` holding ``<split>.images.npy``,
``<split>.labels.npy`` and ``meta.json``. The key hashes the source's path, size and
modification time (every file, for a folder) and the reader options, so a changed source is
decoded again. Entries are built in a temporary folder and renamed into place: an interrupted or
failed decode leaves no entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from wrn.data.dataset import ArrayDataset
from wrn.fsio import synced_open, write_synced

CACHE_VERSION = 1  # bump when a reader's output changes, so old entries are not reused


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else ``$WRN_CACHE``, else ``~/.cache/wrn``."""
    root = cache_dir or os.environ.get("WRN_CACHE") or Path.home() / ".cache" / "wrn"
    return Path(root).expanduser()


def source_key(path: Path, options: dict) -> str:
    path = path.resolve()
    if path.is_dir():
        files = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                files.append((os.path.relpath(os.path.join(dirpath, name), path), st.st_size, st.st_mtime_ns))
    else:
        st = path.stat()
        files = [(path.name, st.st_size, st.st_mtime_ns)]
    blob = json.dumps({"v": CACHE_VERSION, "path": str(path), "options": options, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save(path: Path, array: np.ndarray) -> None:
    with synced_open(path) as f:
        np.save(f, np.ascontiguousarray(array))


def _load(entry: Path) -> dict[str, ArrayDataset]:
    meta = json.loads((entry / "meta.json").read_text())
    return {
        split: ArrayDataset(
            np.load(entry / f"{split}.images.npy", mmap_mode="r"),
            np.load(entry / f"{split}.labels.npy"),
            meta["classes"],
        )
        for split in meta["splits"]
    }


def cached_decode(
    source: Path,
    decode: Callable[[], dict[str, ArrayDataset]],
    *,
    cache_dir: str | os.PathLike | None = None,
    options: dict | None = None,
    quiet: bool | None = None,
) -> dict[str, ArrayDataset]:
    """``decode()`` the first time; afterwards the memory-mapped arrays of that result."""
    options = options or {}
    decoded = cache_root(cache_dir) / "decoded"
    stem = source.name.split(".")[0] or "data"
    entry = decoded / f"{stem}-{source_key(source, options)}"
    if (entry / "meta.json").is_file():
        return _load(entry)
    loud = sys.stderr.isatty() if quiet is None else not quiet
    if loud:
        print(f"wrn: decoding {source} into {decoded} (first use only)", file=sys.stderr, flush=True)
    datasets = decode()
    decoded.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=decoded))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        for split, ds in datasets.items():
            _save(tmp / f"{split}.images.npy", ds.images)
            _save(tmp / f"{split}.labels.npy", ds.labels)
        classes = next(iter(datasets.values())).classes
        meta = {"source": str(source.resolve()), "options": options, "splits": list(datasets), "classes": classes}
        write_synced(tmp / "meta.json", json.dumps(meta, indent=1).encode())  # last: marks the entry complete
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _drop_stale(decoded, entry, str(source.resolve()), options)
    return _load(entry)


def _drop_stale(decoded: Path, keep: Path, source: str, options: dict) -> None:
    # Entries of an earlier version of the same file would otherwise pile up.
    for other in decoded.glob(f"{keep.name.rsplit('-', 1)[0]}-*"):
        if other == keep or not (other / "meta.json").is_file():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source") == source and meta.get("options") == options:
            shutil.rmtree(other, ignore_errors=True)
