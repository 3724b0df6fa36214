"""Readers: official formats written byte-for-byte like the originals, image folders, archives.

The writers below are also used by test_data_download.py and test_data_cache.py.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from wrn.data import load_dataset
from wrn.data.catalog import CIFAR10_CLASSES
from wrn.data.formats import class_order, read_source
from wrn.errors import UserError

# The real JPEG CIFAR-10 that lies beside the repository (../shared/data), where there is one.
REAL_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"

# ------------------------------------------------------------------ writers of official formats


def py2_pickle(obj) -> bytes:
    # The originals are Python 2 pickles (protocol 2) whose numpy globals name numpy.core.
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC -> the official rows of 3072 bytes (R plane, G plane, B plane)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def make_cifar10(rng: np.random.Generator, per_batch: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: (rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, per_batch))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    }


def cifar10_files(batches) -> dict[str, bytes]:
    files = {}
    for name, (images, labels) in batches.items():
        files[name] = py2_pickle(
            {
                b"batch_label": f"batch {name}".encode(),
                b"labels": [int(v) for v in labels],
                b"data": cifar_rows(images),
                b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            }
        )
    files["batches.meta"] = py2_pickle(
        {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    )
    return files


def write_tar_gz(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_cifar10_archive(path: Path, rng: np.random.Generator):
    batches = make_cifar10(rng)
    return write_tar_gz(path, "cifar-10-batches-py", cifar10_files(batches)), batches


def write_cifar100_archive(path: Path, rng: np.random.Generator, n: int = 12):
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    splits, files = {}, {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        splits[split] = (images, fine, coarse)
        files[split] = py2_pickle(
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": split.encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": cifar_rows(images),
            }
        )
    files["meta"] = py2_pickle({b"fine_label_names": [s.encode() for s in fine_names], b"coarse_label_names": [s.encode() for s in coarse_names]})
    return write_tar_gz(path, "cifar-100-python", files), splits, fine_names, coarse_names


def write_svhn(folder: Path, rng: np.random.Generator, sizes=None, y_double: bool = True):
    """SVHN format 2: X is 32x32x3xN uint8, y is Nx1 with 10 for digit 0."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (sizes or {"train": 7, "test": 5, "extra": 4}).items():
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        digits = rng.integers(0, 10, n)
        digits[0] = 0
        y = np.where(digits == 0, 10, digits).reshape(n, 1)
        x = images.transpose(1, 2, 3, 0)  # N,H,W,C -> H,W,C,N
        # The official files hold y as class double; a uint8 y must read the same.
        y = y.astype(np.float64 if y_double else np.uint8)
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y}, do_compression=True)  # v5, as MATLAB saves
        data[split] = (images, digits)
    return data


def write_image_tree(root: Path, rng: np.random.Generator, classes=("cat", "dog", "ant"), per_class=None, size=(8, 6)):
    """root/<split>/<class>/<i>.png (lossless) with known pixels; returns {split: {class: [arrays]}}."""
    per_class = per_class or {"train": 3, "test": 2}
    truth: dict[str, dict[str, list[np.ndarray]]] = {}
    for split, n in per_class.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                ext = "bmp" if i == 1 else "png"
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.{ext}")
                truth.setdefault(split, {}).setdefault(c, []).append(pixels)
    return truth


def archive_tree(root: Path, dest: Path, prefix: str = "") -> Path:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w") as zf:
            for p in files:
                zf.write(p, prefix + p.relative_to(root).as_posix())
    else:
        mode = {"tar": "w", "gz": "w:gz", "xz": "w:xz"}[dest.name.rsplit(".", 1)[-1]]
        with tarfile.open(dest, mode) as tf:
            for p in reversed(files):  # member order must not matter
                tf.add(p, prefix + p.relative_to(root).as_posix())
    return dest


def check_tree(datasets, truth, classes):
    assert datasets["train"].classes == classes
    for split, by_class in truth.items():
        ds = datasets[split]
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
        assert len(ds) == sum(len(v) for v in by_class.values())
        for c, arrays in by_class.items():
            got = ds.images[ds.labels == classes.index(c)]
            np.testing.assert_array_equal(got, np.stack(arrays))  # within a class: file-name order


# ---------------------------------------------------------------------------------------- tests


def test_cifar10_archive_and_folder_round_trip(tmp_path):
    path, batches = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(0))
    train_x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    with tarfile.open(path) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    for source in (path, tmp_path / "extracted", tmp_path / "extracted" / "cifar-10-batches-py"):
        ds = read_source(source)
        assert sorted(ds) == ["test", "train"]
        np.testing.assert_array_equal(ds["train"].images, train_x)
        np.testing.assert_array_equal(ds["train"].labels, train_y)
        np.testing.assert_array_equal(ds["test"].images, batches["test_batch"][0])
        np.testing.assert_array_equal(ds["test"].labels, batches["test_batch"][1])
        assert ds["train"].classes == list(CIFAR10_CLASSES)


def test_cifar100_fine_and_coarse(tmp_path):
    path, splits, fine_names, coarse_names = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", np.random.default_rng(1))
    fine = load_dataset(path, cache_dir=tmp_path / "cache")
    coarse = load_dataset(path, cache_dir=tmp_path / "cache", coarse=True)
    for split, (images, f, c) in splits.items():
        np.testing.assert_array_equal(fine[split].images, images)
        np.testing.assert_array_equal(fine[split].labels, f)
        np.testing.assert_array_equal(coarse[split].labels, c)
    assert fine["train"].classes == fine_names and coarse["train"].classes == coarse_names


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    files = cifar10_files(make_cifar10(np.random.default_rng(0), 2))
    files["test_batch"] = pickle.dumps({b"data": Evil()}, protocol=2)
    path = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        read_source(path)


@pytest.mark.parametrize("y_double", [True, False])
def test_svhn_mat_round_trip(tmp_path, y_double):
    truth = write_svhn(tmp_path / "svhn", np.random.default_rng(2), y_double=y_double)
    ds = read_source(tmp_path / "svhn")
    assert sorted(ds) == ["extra", "test", "train"]
    for split, (images, digits) in truth.items():
        np.testing.assert_array_equal(ds[split].images, images)
        np.testing.assert_array_equal(ds[split].labels, digits)  # label 10 -> digit 0
    assert ds["train"].classes == [str(d) for d in range(10)]
    single = read_source(tmp_path / "svhn" / "test_32x32.mat")
    np.testing.assert_array_equal(single["test"].images, truth["test"][0])


@pytest.mark.parametrize("variables, words", [
    ({"y": np.ones((3, 1))}, "no X variable"),
    ({"X": np.zeros((32, 32, 3, 3), np.uint8)}, "no y variable"),
    ({"X": np.zeros((32, 32, 3, 3)), "y": np.ones((3, 1))}, "X holds float64 values, not the uint8 pixels"),
    ({"X": np.zeros((32, 32, 3, 3), np.uint8), "y": np.ones((2, 1))}, "expected X of shape 32x32x3xN and y of N labels"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])}, "label 11 is out of range"),
])
def test_svhn_mat_that_is_not_svhn(tmp_path, variables, words):
    """A readable .mat file that does not hold SVHN: one line naming the file and what is wrong."""
    savemat(tmp_path / "train_32x32.mat", variables)
    with pytest.raises(UserError, match=f"train_32x32.mat: damaged .*{words}") as err:
        read_source(tmp_path / "train_32x32.mat")
    assert "\n" not in str(err.value)


def test_image_folder_and_every_archive_type(tmp_path):
    root = tmp_path / "tree"
    truth = write_image_tree(root, np.random.default_rng(3))
    classes = ["ant", "cat", "dog"]  # sorted folder names
    check_tree(read_source(root), truth, classes)
    for i, name in enumerate(["d.tar", "d.tar.gz", "d.tar.xz", "d.zip"]):
        archive = archive_tree(root, tmp_path / name, prefix="mydata/" if i % 2 else "")
        check_tree(read_source(archive), truth, classes)


def test_class_order_official_for_cifar10_names_sorted_otherwise(tmp_path):
    assert class_order(reversed(CIFAR10_CLASSES)) == list(CIFAR10_CLASSES)
    assert sorted(CIFAR10_CLASSES) == list(CIFAR10_CLASSES)  # the two orders coincide
    assert class_order(["b", "a", "c"]) == ["a", "b", "c"]
    # A class present in test only still gets one global label for both splits.
    root = tmp_path / "t"
    write_image_tree(root, np.random.default_rng(4), classes=("zebra", "ape"), per_class={"train": 1})
    write_image_tree(root, np.random.default_rng(5), classes=("moth",), per_class={"test": 1})
    ds = read_source(root)
    assert ds["train"].classes == ds["test"].classes == ["ape", "moth", "zebra"]
    assert ds["test"].labels.tolist() == [1]


def test_image_folder_errors_name_the_file(tmp_path):
    root = tmp_path / "tree"
    write_image_tree(root, np.random.default_rng(6))
    (root / "train" / "cat" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match=r"bad\.png") as err:
        read_source(root)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images found"):
        read_source(empty)
    mixed = tmp_path / "mixed"
    write_image_tree(mixed, np.random.default_rng(7), size=(8, 6))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(mixed / "train" / "cat" / "zzz.png")
    with pytest.raises(UserError, match="size"):
        read_source(mixed)


def test_many_images_decode_in_the_worker_pool(tmp_path):
    # > 1 chunk so that the process pool path runs; results must equal in-process decoding.
    root = tmp_path / "many"
    write_image_tree(root, np.random.default_rng(8), classes=("a", "b"), per_class={"train": 1100}, size=(4, 4))
    pooled = read_source(root)
    serial = read_source(root, workers=1)
    np.testing.assert_array_equal(pooled["train"].images, serial["train"].images)
    assert len(pooled["train"]) == 2200


@pytest.fixture(scope="module")
def real_cifar10_sample(tmp_path_factory):
    """A small .tar.xz of real members of the shared CIFAR-10 JPEG archive (read by path)."""
    if not REAL_CIFAR10.is_file():
        pytest.skip(f"{REAL_CIFAR10} is not on this machine")
    keep = {"train": 20, "test": 5}
    counts: dict[tuple[str, str], int] = {}
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(REAL_CIFAR10, "r|xz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) < keep[parts[0]]:
                counts[key] = counts.get(key, 0) + 1
                members.append((m, tf.extractfile(m).read()))
    path = tmp_path_factory.mktemp("real") / "cifar10-sample.tar.xz"
    with tarfile.open(path, "w:xz") as out:
        for m, data in members:
            out.addfile(m, io.BytesIO(data))
    return path, members


def test_real_cifar10_jpeg_members(real_cifar10_sample, tmp_path):
    path, members = real_cifar10_sample
    ds = load_dataset(path, cache_dir=tmp_path)
    assert ds["train"].classes == list(CIFAR10_CLASSES)
    assert len(ds["train"]) == 200 and len(ds["test"]) == 50
    assert np.bincount(ds["train"].labels).tolist() == [20] * 10
    assert ds["train"].images.shape[1:] == (32, 32, 3)
    # Pixels equal Pillow's decoding of the same member.
    m, data = next((m, d) for m, d in members if m.name.startswith("test/ship/"))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    first_ship = np.flatnonzero(ds["test"].labels == CIFAR10_CLASSES.index("ship"))[0]
    np.testing.assert_array_equal(ds["test"].images[first_ship], expected)
