"""ZCA whitening (wrn.data.zca): what the fit does to the training images, and Augment applying it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wrn.data import zca
from wrn.data.augment import Augment
from wrn.errors import UserError

N, H, W, C = 2000, 8, 8, 3
D = H * W * C


@pytest.fixture(scope="module")
def images(one_thread) -> np.ndarray:
    """uint8 [N, 8, 8, 3] with correlated pixels (a 4x4 pattern upsampled, plus pixel noise), like
    natural images: neighbouring values move together, so the raw covariance is far from identity."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(N, 4, 4, C))
    x = np.repeat(np.repeat(coarse, 2, 1), 2, 2) + 0.3 * rng.normal(size=(N, H, W, C))
    return np.clip(128 + 40 * x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def paper_fit(images) -> zca.Whitening:
    return zca.fit(images)


def covariance(flat: torch.Tensor) -> torch.Tensor:
    return torch.cov(flat.double().T, correction=0)


def whitened(aug: Augment, images: np.ndarray) -> torch.Tensor:
    out = aug(torch.from_numpy(images))  # [N, C, H, W]
    return out.permute(0, 2, 3, 1).reshape(len(images), -1)  # back to the stored HWC order


def test_whitened_training_images_have_identity_covariance(images):
    w = zca.fit(images, 1e-6, gcn=0)
    out = whitened(Augment(whiten=w, crop_padding=0, flip=False), images)
    torch.testing.assert_close(covariance(out), torch.eye(D, dtype=torch.float64), atol=2e-3, rtol=0)
    assert out.double().mean(0).abs().max() < 1e-4


def test_control_unwhitened_images_are_correlated(images):
    raw = whitened(Augment((0.5,) * 3, (0.25,) * 3, crop_padding=0, flip=False), images)
    cov = covariance(raw)
    corr = cov / cov.diag().sqrt().outer(cov.diag().sqrt())
    assert (corr - torch.eye(D, dtype=torch.float64)).abs().max() > 0.5


def test_paper_settings_contrast_normalise_then_whiten(images, paper_fit):
    # Contrast normalisation removes each image's own mean, so one direction (all values equal)
    # has no variance left: the whitened covariance is the identity minus that direction.
    w = zca.fit(images, 1e-6)
    assert (w.gcn, zca.PAPER_GCN, zca.PAPER_EPSILON) == (55.0, 55.0, 0.1)
    out = whitened(Augment(whiten=w, crop_padding=0, flip=False), images)
    flat_direction = torch.full((D, 1), D ** -0.5, dtype=torch.float64)
    expected = torch.eye(D, dtype=torch.float64) - flat_direction @ flat_direction.T
    torch.testing.assert_close(covariance(out), expected, atol=2e-3, rtol=0)
    # The paper's epsilon (0.1) whitens approximately: each eigenvalue lambda of the contrast-
    # normalised data's covariance becomes lambda / (lambda + 0.1).
    paper = covariance(whitened(Augment(whiten=paper_fit, crop_padding=0, flip=False), images))
    lam = torch.linalg.eigvalsh(covariance(zca.contrast_normalize(torch.from_numpy(images).reshape(N, D).double(), 55.0)))
    torch.testing.assert_close(torch.linalg.eigvalsh(paper), (lam / (lam + 0.1)).clamp_min(0), atol=1e-3, rtol=0)


def test_fit_is_deterministic(images, paper_fit):
    a, b = paper_fit, zca.fit(images.copy())
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.mean, b.mean)
    assert torch.equal(a.matrix, a.matrix.T)  # ZCA, not PCA: symmetric
    assert not torch.equal(a.matrix, zca.fit(images[: N // 2]).matrix)  # the data matters


def test_augment_whitens_after_crop_and_flip(images, paper_fit):
    w = paper_fit
    x = torch.from_numpy(images[:64])
    aug = Augment(whiten=w, crop_padding=2, flip=True, channels_last=False)
    out = aug(x, torch.Generator().manual_seed(3))
    cropped = aug.crop_flip(x, torch.Generator().manual_seed(3)).reshape(64, D)
    expected = ((zca.contrast_normalize(cropped.double(), 55.0) - w.mean.double()) @ w.matrix.double())
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(64, D).double(), expected, atol=1e-4, rtol=1e-4)
    assert out.is_contiguous()
    torch.testing.assert_close(aug.normalize(x).permute(0, 2, 3, 1).reshape(64, D), w.apply(x.reshape(64, D)))


def test_save_load_round_trip_is_exact(paper_fit, tmp_path):
    w = paper_fit
    zca.save(w, tmp_path / "zca.safetensors")
    back = zca.load(tmp_path / "zca.safetensors")
    assert torch.equal(back.matrix, w.matrix) and torch.equal(back.mean, w.mean)
    assert (back.shape, back.epsilon, back.gcn) == (w.shape, w.epsilon, w.gcn)
    assert [p.name for p in tmp_path.iterdir()] == ["zca.safetensors"]  # no temporaries left


def test_missing_or_damaged_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="missing"):
        zca.load(tmp_path / "zca.safetensors")
    (tmp_path / "zca.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="damaged"):
        zca.load(tmp_path / "zca.safetensors")


def test_bad_arguments():
    small = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="epsilon"):
        zca.fit(small, 0.0)
    with pytest.raises(ValueError, match="uint8"):
        zca.fit(small.astype(np.float32))
    with pytest.raises(UserError, match="small images"):
        zca.fit(np.zeros((2, 224, 224, 3), np.uint8))
    with pytest.raises(UserError, match="at least 2"):
        zca.fit(small[:1])
    with pytest.raises(ValueError, match="either mean/std or whiten"):
        Augment((0.5,) * 3, (0.25,) * 3, whiten=zca.fit(small))
    with pytest.raises(ValueError, match="mean and std"):
        Augment()


def test_config_keys():
    from wrn.train.config import load_config

    cfg = load_config("paper-cifar", overrides=["data.normalize=zca"])
    assert (cfg.data.normalize, cfg.data.zca_epsilon) == ("zca", zca.PAPER_EPSILON)
    with pytest.raises(UserError, match="data.zca_epsilon"):
        load_config(overrides=["data.normalize=zca", "data.zca_epsilon=0"])
    with pytest.raises(UserError, match="data.normalize: zca"):
        load_config("paper-imagenet", overrides=["data.normalize=zca"])
