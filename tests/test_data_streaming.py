"""Streaming ImageNet-style pipeline on a tiny synthetic image tree."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from test_data_formats import archive_tree

from wrn.data.streaming import ImageStream, StreamingLoader, eval_transform, random_resized_crop_box, train_transform
from wrn.errors import UserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("n01440764", "n01443537", "n01484850"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = rng.integers(40, 90, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{c}_{i}.JPEG", quality=90)
    return root


def test_random_resized_crop_box_is_inside_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(500):
        W, H = (int(v) for v in rng.integers(10, 400, 2))
        x, y, w, h = random_resized_crop_box(W, H, rng)
        assert 0 <= x and 0 <= y and x + w <= W and y + h <= H and w > 0 and h > 0
    # aspect ratio and area of typical boxes
    x, y, w, h = random_resized_crop_box(1000, 1000, np.random.default_rng(1))
    assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 and 0.08 * 1e6 * 0.9 <= w * h <= 1e6


def test_eval_transform_resize_256_centre_crop_224():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    out = eval_transform(im)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    resized = np.asarray(im.resize((int(256 * 500 / 300), 256), Image.BILINEAR))
    left = int(round((resized.shape[1] - 224) / 2))
    np.testing.assert_array_equal(out, resized[16:240, left : left + 224])


def test_train_transform_shape_and_determinism():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    a = train_transform(im, np.random.default_rng([1, 2, 3]), 32)
    b = train_transform(im, np.random.default_rng([1, 2, 3]), 32)
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_loader_over_folder_and_archives(tree, tmp_path, kind):
    source = tree if kind == "folder" else archive_tree(tree, tmp_path / f"imgs.{kind}")
    train = StreamingLoader(source, "train", 4, train=True, workers=2 if kind == "zip" else 0, image_size=32, seed=3)
    val = StreamingLoader(source, "val", 4, train=False, workers=0, image_size=32, resize=36)
    assert train.classes == ["n01440764", "n01443537", "n01484850"] == val.classes
    assert len(train) == 4 and len(val) == 2  # 18 // 4 (drop_last) and ceil(6 / 4)
    batches = list(train.epoch(0))
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (4, 32, 32, 3) and labels.dtype == torch.int64
    again = list(train.epoch(0, start_step=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[2:], again))  # exact resume
    assert sum(len(b[1]) for b in val.epoch(0)) == 6
    assert not torch.equal(batches[0][0], next(iter(train.epoch(1)))[0])


def test_compressed_tar_is_refused_with_the_fix(tree, tmp_path):
    with pytest.raises(UserError, match="uncompressed .tar"):
        ImageStream(archive_tree(tree, tmp_path / "x.tar.gz"), "train", train=True)


def test_damaged_image_names_the_file(tree, tmp_path):
    bad = tmp_path / "bad"
    (bad / "train" / "c").mkdir(parents=True)
    (bad / "train" / "c" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(UserError, match="broken.jpg"):
        ImageStream(bad, "train", train=True)[0]
    with pytest.raises(UserError, match="no images in split 'val'"):
        ImageStream(bad, "val", train=False)
