"""Readers of the official dataset distributions and of image folders, into ``ArrayDataset``.

Supported sources (a path):
- CIFAR-10 / CIFAR-100 "python version": ``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``
  or their extracted folders (``cifar-10-batches-py/``, ``cifar-100-python/``);
- SVHN format 2: a folder holding ``train_32x32.mat``, ``test_32x32.mat`` (``extra_32x32.mat``);
- image folders ``root/<split>/<class>/*.png|jpg|...`` and the same inside ``.tar``, ``.tar.gz``,
  ``.tar.xz``, ``.tar.bz2`` or ``.zip`` archives, read without extracting to disk.

All readers return ``{split: ArrayDataset}``. Damaged files raise a one-line ``UserError`` that
names the file.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import pickle
import sys
import tarfile
import zipfile
import zlib
import lzma
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from scipy.io.matlab import MatReadError, loadmat

from wrn.data import catalog
from wrn.data.dataset import ArrayDataset
from wrn.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip")
SPLIT_ALIASES = {"valid": "val", "validation": "val", "testing": "test", "training": "train"}
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR100_FILES = ["train", "test", "meta"]
# split -> file name: "train_32x32.mat" holds the train split
SVHN_FILES = {f.filename.split("_")[0]: f.filename for f in catalog.get("svhn").files}
# Errors that mean "this file is damaged" from the archive, image and MATLAB readers.
DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, MatReadError,
           NotImplementedError, pickle.UnpicklingError, KeyError, TypeError, ValueError)


def damaged(path: str | Path, err: BaseException) -> UserError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UserError(f"{path}: damaged or truncated file ({reason}): download it again or pass another copy")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def class_order(names: Iterable[str]) -> list[str]:
    """Sorted folder names; CIFAR-10's class set keeps the official label order."""
    names = set(names)
    official = catalog.get("cifar10").classes
    if names == set(official):
        return list(official)  # (it equals the sorted order; kept explicit on purpose)
    return sorted(names)


# --------------------------------------------------------------------------------------- CIFAR


class _CifarUnpickler(pickle.Unpickler):
    # The CIFAR batches are Python 2 pickles of dicts of numpy arrays and lists. Only the numpy
    # reconstruction functions are allowed: a pickle may otherwise run arbitrary code.
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy 2 moved it; the old name warns
        return super().find_class(module, name)


def _unpickle(data: bytes) -> dict:
    obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError("a CIFAR batch is a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_images(batch: dict) -> np.ndarray:
    # Rows of 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def parse_cifar10(files: dict[str, bytes]) -> dict[str, ArrayDataset]:
    classes = _names(_unpickle(files["batches.meta"])["label_names"])
    out = {}
    for split, names in (("train", CIFAR10_FILES[:5]), ("test", ["test_batch"])):
        batches = [_unpickle(files[n]) for n in names]
        images = np.concatenate([_cifar_images(b) for b in batches])
        labels = np.concatenate([np.asarray(b["labels"], np.int64) for b in batches])
        out[split] = ArrayDataset(images, labels, classes)
    return out


def parse_cifar100(files: dict[str, bytes], *, coarse: bool = False) -> dict[str, ArrayDataset]:
    meta = _unpickle(files["meta"])
    kind = "coarse" if coarse else "fine"
    classes = _names(meta[f"{kind}_label_names"])
    out = {}
    for split in ("train", "test"):
        batch = _unpickle(files[split])
        out[split] = ArrayDataset(_cifar_images(batch), np.asarray(batch[f"{kind}_labels"], np.int64), classes)
    return out


def _find_cifar_folder(path: Path) -> tuple[str, Path] | None:
    for folder in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if all((folder / n).is_file() for n in CIFAR10_FILES):
            return "cifar10", folder
        if all((folder / n).is_file() for n in CIFAR100_FILES):
            return "cifar100", folder
    return None


def read_cifar_folder(kind: str, folder: Path, *, coarse: bool = False) -> dict[str, ArrayDataset]:
    names = CIFAR10_FILES if kind == "cifar10" else CIFAR100_FILES
    files = {}
    for n in names:
        files[n] = (folder / n).read_bytes()
    try:
        return parse_cifar10(files) if kind == "cifar10" else parse_cifar100(files, coarse=coarse)
    except DAMAGED as e:
        raise damaged(folder, e) from e


# ---------------------------------------------------------------------------------------- SVHN


def read_svhn_mat(path: Path) -> ArrayDataset:
    """One SVHN format-2 file: ``X`` uint8 [32, 32, 3, N] and ``y`` [N, 1] with digit 0 written as 10."""
    try:
        with open(path, "rb") as f:
            header = f.read(128)
        # loadmat fails with an IndexError on a file shorter than its header, and reads v7.3 (HDF5) not at all.
        if len(header) < 128 or not header.startswith(b"MATLAB 5.0 MAT-file"):
            raise ValueError("not a MATLAB 5.0 MAT-file (v7.3/HDF5 files are not supported)")
        mat = loadmat(path, variable_names=["X", "y"])
        if "X" not in mat or "y" not in mat:
            raise ValueError(f"no {'X' if 'X' not in mat else 'y'} variable (an SVHN file holds X and y)")
        x, y = mat["X"], mat["y"]
        if x.ndim != 4 or x.shape[2] != 3 or y.size != x.shape[3]:
            raise ValueError(f"expected X of shape 32x32x3xN and y of N labels, got {x.shape} and {y.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"X holds {x.dtype} values, not the uint8 pixels of SVHN")
        if y.size and (y.min() < 1 or y.max() > 10 or not np.array_equal(y, np.round(y))):
            # Labels are the digits 1..10 (10 = digit 0); the modulo below would hide anything else.
            raise ValueError(f"label {float(y.min() if y.min() < 1 else y.max()):g} is out of range (SVHN labels are 1..10)")
    except DAMAGED as e:
        raise damaged(path, e) from e
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # HxWxCxN -> NHWC
    labels = y.reshape(-1).astype(np.int64) % 10  # SVHN writes digit 0 as label 10
    return ArrayDataset(images, labels, list(catalog.get("svhn").classes))


def read_svhn_folder(folder: Path) -> dict[str, ArrayDataset]:
    return {split: read_svhn_mat(folder / name) for split, name in SVHN_FILES.items() if (folder / name).is_file()}


# ------------------------------------------------------------------------------- image folders


def _decode_one(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        # tobytes + frombuffer is ~1.5x faster than np.asarray(im) for tiny images
        return np.frombuffer(im.tobytes(), np.uint8).reshape(im.height, im.width, 3)


def _decode_chunk(items: list[tuple[str, bytes | None]]) -> tuple[np.ndarray | None, str | None]:
    """Decode (name, bytes) pairs (bytes None = read the file ``name``) into one uint8 array."""
    arrays = []
    for name, data in items:
        try:
            arrays.append(_decode_one(Path(name).read_bytes() if data is None else data))
        except Exception as e:  # noqa: BLE001 - any decoder failure means a damaged image
            return None, f"{name}: cannot decode the image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        if arrays[-1].shape != arrays[0].shape:
            return None, f"{name}: image size {arrays[-1].shape[1]}x{arrays[-1].shape[0]} differs from {arrays[0].shape[1]}x{arrays[0].shape[0]}"
    return np.stack(arrays), None


def member_split_class(name: str) -> tuple[str, str] | None:
    """(split, class) of a member ``[prefix/]split/class/file.ext``, or None if not an image."""
    # "./train/cat/1.png" is what `tar -C root .` writes: "." parts are not folders.
    parts = [p for p in name.replace("\\", "/").strip("/").split("/") if p != "."]
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    split = parts[-3].lower()
    return SPLIT_ALIASES.get(split, split), parts[-2]


class _Decoder:
    """Decodes images in a pool of processes while the caller is still reading the source."""

    CHUNK = 1024

    def __init__(self, workers: int | None = None):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.workers = min(cpus, 8) if workers is None else workers
        self.pool: cf.ProcessPoolExecutor | None = None
        self.pending: list[tuple[list[tuple[str, str, str]], cf.Future | tuple]] = []
        self.keys: list[tuple[str, str, str]] = []
        self.items: list[tuple[str, bytes | None]] = []

    def add(self, key: tuple[str, str, str], name: str, data: bytes | None) -> None:
        self.keys.append(key)
        self.items.append((name, data))
        if len(self.items) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self.items:
            return
        keys, items = self.keys, self.items
        self.keys, self.items = [], []
        if self.pool is None and self.workers > 1 and len(self.pending) >= 1:
            # Only a second chunk starts the pool: small folders decode faster in-process.
            ctx = multiprocessing.get_context("fork") if sys.platform == "linux" else None
            self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx)
        self.pending.append((keys, self.pool.submit(_decode_chunk, items) if self.pool else _decode_chunk(items)))

    def results(self) -> Iterator[tuple[list[tuple[str, str, str]], np.ndarray]]:
        self._flush()
        try:
            for keys, job in self.pending:
                array, error = job.result() if isinstance(job, cf.Future) else job
                if error:
                    raise UserError(f"{error}: replace or remove that file")
                yield keys, array
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _wanted(name: str) -> bool:
    return member_split_class(name) is not None or Path(name).name in CIFAR10_FILES + CIFAR100_FILES


def _iter_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the image members, in archive order, never extracting to disk."""
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and _wanted(info.filename):
                    yield info.filename, zf.read(info)
        return
    # Stream mode ("r|*") reads a compressed tar once, front to back, with no seeks.
    with tarfile.open(path, "r|*") as tf:
        for member in tf:
            if member.isfile() and _wanted(member.name):
                f = tf.extractfile(member)
                yield member.name, f.read() if f else b""


def _assemble(decoder: _Decoder, where: Path) -> dict[str, ArrayDataset]:
    chunks = list(decoder.results())
    if not chunks:
        raise UserError(f"{where}: no images found; expected the layout <split>/<class>/<image>.png|jpg (e.g. train/cat/0001.png)")
    keys = [k for ks, _ in chunks for k in ks]
    shapes = {a.shape[1:] for _, a in chunks}
    if len(shapes) > 1:
        raise UserError(f"{where}: images have different sizes {sorted(shapes)}: resize them to one size, or use the streaming loader")
    images = np.concatenate([a for _, a in chunks]) if len(chunks) > 1 else chunks[0][1]
    classes = class_order(k[1] for k in keys)
    index = {c: i for i, c in enumerate(classes)}
    # A fixed order (split, class, file name) whatever the archive's member order.
    order = sorted(range(len(keys)), key=lambda i: (keys[i][0], index[keys[i][1]], keys[i][2]))
    splits = np.array([keys[i][0] for i in order])
    labels = np.array([index[keys[i][1]] for i in order], np.int64)
    images = images[np.asarray(order)]
    out = {}
    for split in sorted(set(splits.tolist())):
        mask = splits == split
        out[split] = ArrayDataset(images[mask], labels[mask], classes)
    return out  # training needs train/ and test/ (make_splits says so); evaluation may read test/ alone


def read_image_folder(root: Path, *, workers: int | None = None) -> dict[str, ArrayDataset]:
    decoder = _Decoder(workers)
    try:
        return _walk_folder(root, decoder)
    finally:
        decoder.close()


def _walk_folder(root: Path, decoder: _Decoder) -> dict[str, ArrayDataset]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            key = member_split_class(os.path.relpath(full, root))
            if key:
                decoder.add((key[0], key[1], fname), full, None)
    return _assemble(decoder, root)


def read_archive(path: Path, *, coarse: bool = False, workers: int | None = None) -> dict[str, ArrayDataset]:
    """An image-folder archive, or an official CIFAR archive (recognised by its member names)."""
    decoder = _Decoder(workers)
    cifar: dict[str, bytes] = {}
    try:
        for name, data in _iter_archive(path):
            key = member_split_class(name)
            if key:
                decoder.add((key[0], key[1], Path(name).name), f"{path}:{name}", data)
            elif Path(name).parent.name in ("cifar-10-batches-py", "cifar-100-python", ""):
                cifar[Path(name).name] = data
        if all(n in cifar for n in CIFAR10_FILES):
            return parse_cifar10(cifar)
        if all(n in cifar for n in CIFAR100_FILES):
            return parse_cifar100(cifar, coarse=coarse)
        return _assemble(decoder, path)
    except UserError:
        raise
    except DAMAGED as e:
        raise damaged(path, e) from e
    finally:
        decoder.close()


# -------------------------------------------------------------------------------------- sniff


def describe(path: Path) -> str:
    """The reader a path needs: 'cifar10', 'cifar100', 'svhn', 'images' or 'archive'."""
    if path.is_dir():
        found = _find_cifar_folder(path)
        if found:
            return found[0]
        if any((path / n).is_file() for n in SVHN_FILES.values()):
            return "svhn"
        return "images"
    if path.suffix.lower() == ".mat":
        return "svhn-file"
    if is_archive(path):
        return "archive"
    raise UserError(f"{path}: unknown dataset format: pass a CIFAR archive or folder, a folder of SVHN .mat files, an image folder, or a .tar/.tar.gz/.tar.xz/.zip of one")


def read_source(path: Path, *, coarse: bool = False, workers: int | None = None) -> dict[str, ArrayDataset]:
    """Decode any supported source into ``{split: ArrayDataset}``."""
    kind = describe(path)
    if kind in ("cifar10", "cifar100"):
        return read_cifar_folder(*_find_cifar_folder(path), coarse=coarse)
    if kind == "svhn":
        return read_svhn_folder(path)
    if kind == "svhn-file":
        split = path.stem.split("_")[0]
        return {split if split in SVHN_FILES else "train": read_svhn_mat(path)}
    if kind == "images":
        return read_image_folder(path, workers=workers)
    return read_archive(path, coarse=coarse, workers=workers)
