"""Batched augmentation against a per-image reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wrn.data.augment import Augment
from wrn.models import create_model
from wrn.train import accel

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def batch(n=64, h=32, w=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8))


def padded_crops(image_hwc: torch.Tensor, p: int) -> dict:
    """Every (crop, flipped crop) of the reflect-padded image, per image, the slow way."""
    h, w = image_hwc.shape[:2]
    padded = F.pad(image_hwc.permute(2, 0, 1).float()[None], (p, p, p, p), mode="reflect")[0]
    out = {}
    for y in range(2 * p + 1):
        for x in range(2 * p + 1):
            crop = padded[:, y : y + h, x : x + w]
            out[(y, x, False)] = crop
            out[(y, x, True)] = crop.flip(-1)
    return out


def test_crops_are_true_crops_of_the_padded_image():
    x = batch(48, 32, 28)
    aug = Augment(MEAN, STD, crop_padding=4)
    out = aug.crop_flip(x, torch.Generator().manual_seed(0)).permute(0, 3, 1, 2).float()
    seen = set()
    for i in range(len(x)):
        matches = [k for k, crop in padded_crops(x[i], 4).items() if torch.equal(crop, out[i])]
        assert matches, f"image {i} is not a crop of its padded self"
        seen.add(matches[0][:2])
    assert len(seen) > 20  # offsets vary per image


def test_normalisation_and_layout():
    x = batch(8)
    aug = Augment(MEAN, STD, crop_padding=0, flip=False)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (8, 3, 32, 32)
    ref = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aug.normalize(x), ref, atol=1e-5, rtol=1e-5)


def test_flip_rate_is_about_half():
    # A left-right ramp image: a flip reverses it, whatever the crop.
    ramp = torch.arange(32, dtype=torch.uint8).view(1, 1, 32, 1).expand(4000, 32, 32, 3).contiguous()
    out = Augment((0, 0, 0), (1, 1, 1), crop_padding=0, flip=True).crop_flip(ramp, torch.Generator().manual_seed(1))
    flipped = (out[:, 0, 0, 0] == 31).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_same_seed_same_batch_different_seed_differs():
    x = batch(32)
    aug = Augment(MEAN, STD, cutout=8)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutout_zeroes_a_square_at_most_size_wide():
    x = torch.full((200, 32, 32, 3), 255, dtype=torch.uint8)
    out = Augment((0, 0, 0), (1, 1, 1), crop_padding=0, flip=False, cutout=8)(x, torch.Generator().manual_seed(0))
    for i in range(len(out)):
        hole = out[i, 0] == 0
        assert torch.equal(hole, (out[i] == 0).all(0))  # all channels at once
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        # a solid rectangle: exactly the rows x cols block is zero
        assert hole.sum() == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    sizes = torch.stack([(out[i, 0] == 0).sum() for i in range(len(out))])
    assert (sizes == 64).float().mean() > 0.3  # interior centres give the full 8x8 square


def _is_nchw(x: torch.Tensor) -> bool:
    return x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_output_memory_format_follows_channels_last(channels_last):
    # accel.channels_last=false must feed NCHW to the model (BENCHMARKS' NCHW rows), true NHWC:
    # for training (crop/flip/cutout), evaluation (normalize) and whitening alike.
    x = batch(8)
    is_format = _is_nhwc if channels_last else _is_nchw
    plain = Augment(MEAN, STD, cutout=8, channels_last=channels_last)
    assert is_format(plain(x, torch.Generator().manual_seed(0)))
    assert is_format(plain.normalize(x))
    assert is_format(Augment(MEAN, STD, crop_padding=0, flip=False, channels_last=channels_last)(x))
    # Same values either way: only the memory layout differs.
    other = Augment(MEAN, STD, cutout=8, channels_last=not channels_last)
    assert torch.equal(plain(x, torch.Generator().manual_seed(0)), other(x, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_activations_follow_channels_last(channels_last):
    # What the flag is for: the convs run in the requested format. A tiny WRN prepared as the
    # engine prepares it, fed Augment's output as is.
    model = accel.prepare_model(create_model("wrn-10-1", num_classes=10), torch.device("cpu"), channels_last)
    aug = Augment(MEAN, STD, channels_last=channels_last)
    x = batch(4)
    is_format = _is_nhwc if channels_last else _is_nchw
    with torch.no_grad():
        for inputs in (aug(x, torch.Generator().manual_seed(0)), aug.normalize(x)):
            assert is_format(inputs)
            stem = model.conv1(inputs)  # [4, 16, 32, 32]
            assert is_format(stem)
            assert is_format(model.conv2[0].branch[0](torch.relu(model.conv2[0].bn(stem))))


def test_control_channels_last_input_turns_an_nchw_model_channels_last():
    # The old Augment always returned a channels_last view: with a plain NCHW model the convs
    # then ran channels_last anyway, which the test above would catch.
    model = accel.prepare_model(create_model("wrn-10-1", num_classes=10), torch.device("cpu"), False)
    old_style = Augment(MEAN, STD, channels_last=True).normalize(batch(4))
    with torch.no_grad():
        assert not _is_nchw(model.conv1(old_style))


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        Augment(MEAN, STD)(torch.zeros(2, 32, 32, 3))


@pytest.mark.gpu
def test_cuda_matches_the_cpu_semantics():
    x = batch(64)
    aug = Augment(MEAN, STD, cutout=8)
    torch.testing.assert_close(aug.normalize(x.cuda()).cpu(), aug.normalize(x), atol=1e-5, rtol=1e-5)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = aug.crop_flip(x.cuda(), g).cpu().permute(0, 3, 1, 2).float()
    for i in range(8):
        assert any(torch.equal(c, out[i]) for c in padded_crops(x[i], 4).values())
    a = aug(x.cuda(), torch.Generator(device="cuda").manual_seed(3))
    b = aug(x.cuda(), torch.Generator(device="cuda").manual_seed(3))
    assert a.device.type == "cuda" and torch.equal(a, b)
    for channels_last in (False, True):
        out = Augment(MEAN, STD, channels_last=channels_last)(x.cuda(), torch.Generator(device="cuda").manual_seed(0))
        assert (_is_nhwc if channels_last else _is_nchw)(out)


@pytest.mark.gpu
def test_cuda_whitening_matches_the_cpu():
    from wrn.data import zca

    images = batch(512, 8, 8).numpy()
    aug = Augment(whiten=zca.fit(images), crop_padding=0, flip=False)
    x = torch.from_numpy(images)
    torch.testing.assert_close(aug.normalize(x.cuda()).cpu(), aug.normalize(x), atol=1e-3, rtol=1e-3)
