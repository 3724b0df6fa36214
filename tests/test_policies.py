"""The augmentation policies: every batched operation against Pillow, image by image (exactly:
no tolerance is needed, geometric operations included, because the batched code runs Pillow's
own arithmetic: float32 blends, float64 tables, 16.16 fixed-point NEAREST sampling); every
(operation, level, direction) of each policy against the published Pillow code's formulas; and
the per-image, seeded randomness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from wrn.cli import main
from wrn.data import image_ops as ops
from wrn.data.augment import Augment
from wrn.data.policies import (AUTOAUGMENT_CIFAR10, OP_INDEX, OPS, STANDARD_OPS, AutoAugment, RandAugment,
                               TrivialAugment, apply_stage, build_policy, geometric_coefficients)
from wrn.errors import UserError
from wrn.train.config import load_config
from wrn.train.numerics import step_seed

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def images(n: int = 24, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Random images, plus the cases that take the lookup tables' other branches: low contrast,
    a constant channel, a constant image, a two-valued image."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    x[0:3] = x[0:3] // 5 + 90
    x[3, :, :, 1] = 7
    x[4] = 200
    x[5] = np.where(rng.random((h, w, 1)) < 0.5, 10, 240).astype(np.uint8)
    return x


def pillow(x: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(img), i)) for i, img in enumerate(x)])


def assert_same(got: torch.Tensor, want: np.ndarray, what: str) -> None:
    got = got.cpu().numpy()
    bad = got != want
    assert not bad.any(), f"{what}: {bad.mean():.2%} of the values differ from Pillow, e.g. image {np.argwhere(bad)[0]}"


# -- each operation ----------------------------------------------------------------------------------

def per_image(values, n):
    return [values[i % len(values)] for i in range(n)]


FACTORS = [0.01, 0.1, 0.37, 0.5, 1.0, 1.3, 1.72, 1.9, 2.0]
ENHANCERS = {"Brightness": (ops.brightness, ImageEnhance.Brightness), "Color": (ops.color, ImageEnhance.Color),
             "Contrast": (ops.contrast, ImageEnhance.Contrast), "Sharpness": (ops.sharpness, ImageEnhance.Sharpness)}


@pytest.mark.parametrize("name", sorted(ENHANCERS))
def test_enhancers_equal_pillow(name):
    x = images(36)
    factors = per_image(FACTORS, len(x))  # a different factor per image, in one batched call
    batched, enhancer = ENHANCERS[name]
    got = batched(torch.from_numpy(x), torch.tensor(factors))
    assert_same(got, pillow(x, lambda img, i: enhancer(img).enhance(factors[i])), name)


def test_lookup_table_operations_equal_pillow():
    x = images(40)
    t = torch.from_numpy(x)
    bits = per_image(range(1, 9), len(x))
    thresholds = per_image([0, 1, 100, 128, 255, 256], len(x))
    assert_same(ops.invert(t), pillow(x, lambda img, i: ImageOps.invert(img)), "invert")
    assert_same(ops.posterize(t, torch.tensor(bits)), pillow(x, lambda img, i: ImageOps.posterize(img, bits[i])),
                "posterize")
    assert_same(ops.solarize(t, torch.tensor(thresholds)),
                pillow(x, lambda img, i: ImageOps.solarize(img, thresholds[i])), "solarize")
    assert_same(ops.autocontrast(t), pillow(x, lambda img, i: ImageOps.autocontrast(img)), "autocontrast")
    assert_same(ops.equalize(t), pillow(x, lambda img, i: ImageOps.equalize(img)), "equalize")
    assert_same(ops.smooth(t), pillow(x, lambda img, i: img.filter(ImageFilter.SMOOTH)), "smooth")


@pytest.mark.parametrize("h,w", [(32, 32), (20, 28)])
def test_geometric_operations_equal_pillow(h, w):
    """Every whole degree the policies use (and 180, a transpose in Pillow), shears over the wide
    range, every translation up to past the border; a square and a non-square image size."""
    cases = ([("Rotate", d, lambda img, v: img.rotate(v, fillcolor=(1, 2, 3))) for d in range(-135, 136)]
             + [("Rotate", 180, lambda img, v: img.rotate(v, fillcolor=(1, 2, 3)))]
             + [("ShearX", s, lambda img, v: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0),
                                                           fillcolor=(1, 2, 3))) for s in np.linspace(-0.99, 0.99, 34)]
             + [("ShearY", s, lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0),
                                                           fillcolor=(1, 2, 3))) for s in np.linspace(-0.99, 0.99, 34)]
             + [("TranslateX", p, lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, v, 0, 1, 0),
                                                               fillcolor=(1, 2, 3))) for p in range(-33, 34)]
             + [("TranslateY", p, lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v),
                                                               fillcolor=(1, 2, 3))) for p in range(-33, 34)])
    x = images(len(cases), h, w, seed=1)
    coeffs = torch.tensor([geometric_coefficients(name, float(v), w, h) for name, v, _ in cases])
    got = ops.affine(torch.from_numpy(x), coeffs, torch.tensor([1, 2, 3], dtype=torch.uint8))
    want = pillow(x, lambda img, i: cases[i][2](img, float(cases[i][1])))
    assert_same(got, want, "geometric operations")


# -- each policy's levels, against the published code's formulas ---------------------------------------------

# The published Pillow code of each policy: PARAMETER_MAX and the ranges (AutoAugment's
# augmentation_transforms.py; the TrivialAugment authors' aug_lib.py, "fixed_standard" space for
# RandAugment and "wide_standard" for TrivialAugment-Wide), and the fill colour used here.
REFERENCE = {
    "autoaugment": dict(pmax=10, shear=0.3, translate=10, rotate=30, posterize=(0, 4), enhance=(0.1, 1.8),
                        fill=(125, 123, 114)),
    "randaugment": dict(pmax=30, shear=0.3, translate=10, rotate=30, posterize=(4, 8), enhance=(0.1, 1.9 - 0.1),
                        fill=(0, 0, 0)),
    "trivialaugment": dict(pmax=30, shear=0.99, translate=32, rotate=135, posterize=(2, 8),
                           enhance=(0.01, 2.0 - 0.01), fill=(0, 0, 0)),
}


def reference_op(img: Image.Image, name: str, level: int, negative: bool, r: dict) -> Image.Image:
    """One operation as the published code applies it (its float_parameter / int_parameter)."""
    fp = float(level) * {"ShearX": r["shear"], "ShearY": r["shear"]}.get(name, r["enhance"][1]) / r["pmax"]
    sign = -1 if negative else 1
    fill = r["fill"]
    if name == "Identity":
        return img
    if name in ("AutoContrast", "Equalize", "Invert"):
        return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}[name](img)
    if name == "Rotate":
        return img.rotate(sign * int(level * r["rotate"] / r["pmax"]), fillcolor=fill)
    if name in ("ShearX", "ShearY"):
        data = (1, sign * fp, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, sign * fp, 1, 0)
        return img.transform(img.size, Image.AFFINE, data, fillcolor=fill)
    if name in ("TranslateX", "TranslateY"):
        p = sign * int(level * r["translate"] / r["pmax"])
        data = (1, 0, p, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, p)
        return img.transform(img.size, Image.AFFINE, data, fillcolor=fill)
    if name == "Posterize":
        low, high = r["posterize"]
        return ImageOps.posterize(img, high - int(level * (high - low) / r["pmax"]))
    if name == "Solarize":
        return ImageOps.solarize(img, 256 - int(level * 256 / r["pmax"]))
    enhancer = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}[name]
    return enhancer(img).enhance(fp + r["enhance"][0])


POLICY_OPS = {"autoaugment": sorted({o for s in AUTOAUGMENT_CIFAR10 for o, _, _ in s}),
              "randaugment": STANDARD_OPS, "trivialaugment": STANDARD_OPS}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_level_of_every_operation_equals_the_published_code(name):
    """One image per (operation, level, direction) of the policy's space, in one batched stage."""
    r = REFERENCE[name]
    policy = build_policy(name)
    levels = range(r["pmax"]) if name == "autoaugment" else range(r["pmax"] + 1)  # AutoAugment's levels: 0..9
    combos = [(op, lv, neg) for op in POLICY_OPS[name] for lv in levels for neg in (False, True)]
    x = images(len(combos), seed=2)
    op, level, negative = (torch.tensor(c) for c in zip(*[(OP_INDEX[o], lv, ng) for o, lv, ng in combos]))
    got = apply_stage(torch.from_numpy(x), op, level, negative, policy.tables(32, 32, torch.device("cpu")),
                      torch.tensor(r["fill"], dtype=torch.uint8))
    want = pillow(x, lambda img, i: reference_op(img, *combos[i], r))
    assert_same(got, want, name)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_a_policy_applies_what_it_draws_in_order(name):
    """The whole policy (drawing, probabilities, stage order) against Pillow image by image."""
    policy = build_policy(name, 3, 17)
    x = images(48, seed=3)
    got = policy(torch.from_numpy(x), torch.Generator().manual_seed(5))
    stages = policy.draw(len(x), torch.Generator().manual_seed(5), torch.device("cpu"))

    def reference(img, i):
        for op, level, negative in stages:
            img = reference_op(img, OPS[op[i]], int(level[i]), bool(negative[i]), REFERENCE[name])
        return img

    assert_same(got, pillow(x, reference), name)


# -- randomness: per image, seeded by the step ---------------------------------------------------------

@pytest.mark.parametrize("policy", [AutoAugment(), RandAugment(2, 9), TrivialAugment()], ids=repr)
def test_each_image_draws_its_own_operations(policy):
    stages = policy.draw(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert all(len(set(op.tolist())) > 3 for op, _, _ in stages)  # never one operation per batch
    x = torch.from_numpy(images(8, seed=4)[7:]).expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    out = policy(x, torch.Generator().manual_seed(0))
    assert len({bytes(o.numpy()) for o in out}) > 8


@pytest.mark.parametrize("name", ["autoaugment", "randaugment", "trivialaugment"])
def test_same_seed_and_step_same_augmentation_and_another_step_another(name):
    aug = Augment(MEAN, STD, cutout=8, policy=build_policy(name))
    x = torch.from_numpy(images(32, seed=6))

    def at(step):
        return aug(x, torch.Generator().manual_seed(step_seed(0, step, 0, 1)))  # the engine's seeding

    assert torch.equal(at(7), at(7))
    assert not torch.equal(at(7), at(8))


def test_the_policy_runs_after_crop_and_flip_and_before_cutout():
    policy = build_policy("trivialaugment")
    aug = Augment(MEAN, STD, cutout=8, policy=policy)
    x = torch.from_numpy(images(16, seed=7))
    got = aug(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    want = aug.normalize(policy(aug.crop_flip(x, g), g))
    want = want.masked_fill(aug._cutout_hole(want.shape, x.device, g), 0.0)
    assert torch.equal(got, want)
    assert "policy=trivialaugment" in repr(aug)


# -- configuration and wrn bench --------------------------------------------------------------------

@pytest.mark.parametrize("override,words", [
    ("data.policy=autoaug", ["data.policy", "'autoaug'", "none | autoaugment | randaugment | trivialaugment"]),
    ("data.policy_ops=0", ["data.policy_ops", "1 to 16"]),
    ("data.policy_magnitude=31", ["data.policy_magnitude", "0 to 30"]),
])
def test_bad_policy_settings_are_one_line_errors(override, words):
    with pytest.raises(UserError) as e:
        load_config("quick", overrides=[override])
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_policy_settings_reach_the_augmentation():
    from wrn.train.data import build_policy as used  # the run's data builder uses the same factory

    cfg = load_config("quick", overrides=["data.policy=randaugment", "data.policy_ops=3", "data.policy_magnitude=15"])
    policy = used(cfg.data.policy, cfg.data.policy_ops, cfg.data.policy_magnitude)
    assert (policy.num_ops, policy.magnitude) == (3, 15)


def test_bench_times_the_augmentation_and_its_share(capsys):
    tiny = ["wrn-10-1", "--input", "8", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "1",
            "accel.compile=false", "--peak-size", "64", "--no-reference", "--no-eval"]
    assert main(["bench", *tiny, "data.policy=autoaugment", "data.cutout=4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    a = r["modes"][0]["augment"]
    assert a["pipeline"] == "crop+flip+autoaugment+cutout4" and a["ms_per_step"] > 0 and a["share_of_train_step"] > 0
    assert a["crop_flip_ms_per_step"] > 0 and "added_share_of_train_step" in a
    assert "data.policy=autoaugment" in r["command"] and "data.cutout=4" in r["command"]
    assert r["settings"]["data"]["policy"] == "autoaugment"
    assert main(["bench", *tiny, "data.name=svhn"]) == 2
    assert "data.policy" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["autoaugment", "randaugment", "trivialaugment"])
def test_the_gpu_computes_what_the_cpu_computes(name):
    """Same draws (made on the CPU), same pixels on CUDA, bit for bit."""
    policy = build_policy(name)
    x = torch.from_numpy(images(64, seed=8))
    cpu, gpu = x, x.cuda()
    fill = torch.tensor(policy.fill, dtype=torch.uint8)
    for op, level, negative in policy.draw(len(x), torch.Generator().manual_seed(1), torch.device("cpu")):
        cpu = apply_stage(cpu, op, level, negative, policy.tables(32, 32, torch.device("cpu")), fill)
        gpu = apply_stage(gpu, op.cuda(), level.cuda(), negative.cuda(), policy.tables(32, 32, gpu.device),
                          fill.cuda())
    assert torch.equal(cpu, gpu.cpu())
