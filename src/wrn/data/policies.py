"""Automatic augmentation policies, per image and batched: AutoAugment's CIFAR-10 policy (Cubuk et
al. 2019), RandAugment (Cubuk et al. 2020) and TrivialAugment-Wide (Mueller & Hutter 2021).

    policy = build_policy("trivialaugment")
    x = policy(x, generator)          # uint8 [N, H, W, C] -> uint8 [N, H, W, C], same device

Every image draws its own operations, levels and signs from ``generator`` (the engine seeds it
per step from (seed, step, rank)), so a batch never shares one choice and a resumed run draws
what the uninterrupted one drew. A policy is a few *stages*; a stage gives each image one
operation (maybe Identity), a level and a sign; the batch is then split by operation, one pass
per operation present (the five geometric ones share one; never one per image), each pass a
batched ``wrn.data.image_ops`` call.

Levels map to parameters with the formulas of the Pillow reference code of each paper, computed
on the host in Python exactly as that code computes them (``int(level * max / PARAMETER_MAX)``
and so on), then per image looked up on the device:

- AutoAugment: the AutoAugment authors' ``augmentation_transforms.py`` (PARAMETER_MAX 10; shear
  0.3, translate 10 px, rotate 30 degrees, posterize to 4 - int(0.4 level) bits, enhancers 0.1 to
  1.9), the paper's 25 CIFAR-10 sub-policies, geometric fill = the CIFAR-10 mean pixel (the
  reference fills with the mean).
- RandAugment: the TrivialAugment authors' RandAugment (``aug_lib.py``, "fixed_standard" space:
  PARAMETER_MAX 30, shear 0.3, translate 10 px, rotate 30, posterize 8 to 4 bits, enhancers 0.1 to
  1.9), N operations drawn with replacement from 14, fixed level M in 0..30; fill black.
- TrivialAugment-Wide: ``aug_lib.py``'s "wide_standard" space (PARAMETER_MAX 30, shear 0.99,
  translate 32 px, rotate 135, posterize 8 to 2 bits, enhancers 0.01 to 2.0), one operation and
  one level in 0..30, both uniform; fill black.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from wrn.data import image_ops as ops

POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")
MAX_MAGNITUDE = 30  # RandAugment's M, on the 31-level scale that TrivialAugment draws from
MAX_OPS = 16  # RandAugment's N (the papers use 1 to 3)

OPS = ("Identity", "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
OP_INDEX = {name: i for i, name in enumerate(OPS)}
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # a coin flips the direction
GEOMETRIC = SIGNED
FACTORS = ("Color", "Contrast", "Brightness", "Sharpness")
# RandAugment's and TrivialAugment's 14 operations (the papers' list and order).
STANDARD_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
                "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")

# The AutoAugment paper's CIFAR-10 policy: 25 sub-policies of two (operation, probability, level).
AUTOAUGMENT_CIFAR10 = (
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)), (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)), (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)), (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
)
CIFAR10_MEAN_PIXEL = (125, 123, 114)  # round(255 * (0.4914, 0.4822, 0.4465))


def level_values(pmax: int, *, shear: float, translate: float, rotate: float, posterize: tuple[int, int],
                 enhance_min: float, enhance_span: float) -> dict[str, list]:
    """Each operation's parameter at levels 0..pmax, as the reference's ``float_parameter`` /
    ``int_parameter`` compute it (``enhance_span`` is passed as the reference writes it, e.g.
    ``2.0 - 0.01``, so that the float64 arithmetic is the same)."""
    levels = range(pmax + 1)
    low, high = posterize
    return {
        "ShearX": [float(v) * shear / pmax for v in levels],
        "ShearY": [float(v) * shear / pmax for v in levels],
        "TranslateX": [int(v * translate / pmax) for v in levels],
        "TranslateY": [int(v * translate / pmax) for v in levels],
        "Rotate": [int(v * rotate / pmax) for v in levels],
        "Posterize": [high - int(v * (high - low) / pmax) for v in levels],
        "Solarize": [256 - int(v * 256 / pmax) for v in levels],
        **{name: [float(v) * enhance_span / pmax + enhance_min for v in levels] for name in FACTORS},
    }


# -- geometry: Pillow's affine coefficients, on the host --------------------------------------------

def _fix(v: float) -> int:
    return math.floor(v * 65536.0 + 0.5)  # Geometry.c's FIX(): 16.16 fixed point


def fixed_coefficients(data: Sequence[float]) -> tuple[int, ...]:
    """Pillow's ``affine_fixed`` integers for ``Image.transform(AFFINE, data)``: the half-pixel
    offset folded into a2 and a5 exactly as Geometry.c does."""
    a = [float(d) for d in data]
    return (_fix(a[0]), _fix(a[1]), _fix(a[2] + a[0] * 0.5 + a[1] * 0.5),
            _fix(a[3]), _fix(a[4]), _fix(a[5] + a[3] * 0.5 + a[4] * 0.5))


def rotate_coefficients(degrees: float, w: int, h: int) -> tuple[int, ...]:
    """``Image.rotate(degrees)`` (NEAREST, about the centre, same size) as fixed coefficients,
    including its exact fast paths (0, 180, and 90/270 on a square image are transposes)."""
    one, half = 65536, 32768
    angle = degrees % 360.0
    if angle == 0:
        return (one, 0, half, 0, one, half)
    if angle == 180:
        return (-one, 0, (w - 1) * one + half, 0, -one, (h - 1) * one + half)
    if angle == 90 and w == h:  # Transpose.ROTATE_90: out[y][x] = in[x][w - 1 - y]
        return (0, -one, (w - 1) * one + half, one, 0, half)
    if angle == 270 and w == h:  # Transpose.ROTATE_270: out[y][x] = in[h - 1 - x][y]
        return (0, one, half, -one, 0, (h - 1) * one + half)
    rad = -math.radians(angle)
    m = [round(math.cos(rad), 15), round(math.sin(rad), 15), 0.0,
         round(-math.sin(rad), 15), round(math.cos(rad), 15), 0.0]
    cx, cy = w / 2, h / 2
    m[2], m[5] = m[0] * -cx + m[1] * -cy + m[2], m[3] * -cx + m[4] * -cy + m[5]
    m[2] += cx
    m[5] += cy
    return fixed_coefficients(m)


def geometric_coefficients(name: str, value: float, w: int, h: int) -> tuple[int, ...]:
    """The affine data the reference passes to Pillow for one signed parameter value."""
    if name == "Rotate":
        return rotate_coefficients(value, w, h)
    data = {"ShearX": (1, value, 0, 0, 1, 0), "ShearY": (1, 0, 0, value, 1, 0),
            "TranslateX": (1, 0, value, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, value)}[name]
    return fixed_coefficients(data)


# -- applying one stage ------------------------------------------------------------------------------

_APPLY: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": lambda x, p, fill: ops.autocontrast(x),
    "Equalize": lambda x, p, fill: ops.equalize(x),
    "Invert": lambda x, p, fill: ops.invert(x),
    "Posterize": lambda x, p, fill: ops.posterize(x, p[:, 0]),
    "Solarize": lambda x, p, fill: ops.solarize(x, p[:, 0]),
    "Color": lambda x, p, fill: ops.color(x, p[:, 0]),
    "Contrast": lambda x, p, fill: ops.contrast(x, p[:, 0]),
    "Brightness": lambda x, p, fill: ops.brightness(x, p[:, 0]),
    "Sharpness": lambda x, p, fill: ops.sharpness(x, p[:, 0]),
    **{name: (lambda x, p, fill: ops.affine(x, p, fill)) for name in GEOMETRIC},
}
# The five geometric operations are one nearest-pixel affine sampling with different coefficients:
# a stage samples all its geometric images in one call (filed under Rotate's index).
_GROUP = torch.tensor([OP_INDEX["Rotate"] if name in GEOMETRIC else i for i, name in enumerate(OPS)])


class Policy:
    """Base: ``values`` (operation -> parameter per level), ``fill`` (geometric ops' outside colour),
    and ``draw()`` (the stages, per image, from the generator) supplied by each policy."""

    name = "policy"

    def __init__(self, values: dict[str, list], fill: Sequence[int]):
        self.values = values
        self.fill = tuple(int(f) for f in fill)
        self._tables: dict[tuple, list[torch.Tensor | None]] = {}

    def __repr__(self) -> str:
        return self.name

    def draw(self, n: int, generator: torch.Generator | None,
             device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``[(op, level, negative)]`` per stage, each ``[n]``: indices into OPS, levels, sign flips."""
        raise NotImplementedError

    def tables(self, h: int, w: int, device: torch.device) -> list[torch.Tensor | None]:
        """Per operation (OPS order) a ``[levels, 2, P]`` table of its parameters by (level, sign
        flipped), built once per image size and device; None for parameterless operations. The
        geometric operations share one ``[len(OPS), levels, 2, 6]`` table of fixed-point affine
        coefficients, indexed by operation first."""
        key = (h, w, str(device))
        if key not in self._tables:
            out: list[torch.Tensor | None] = []
            size = len(next(iter(self.values.values())))
            affine = [[[(0,) * 6] * 2] * size for _ in OPS]
            for name in GEOMETRIC:
                affine[OP_INDEX[name]] = [[geometric_coefficients(name, s * v, w, h) for s in (1, -1)]
                                          for v in self.values[name]]
            affine_table = torch.tensor(affine, dtype=torch.int64, device=device)
            for name in OPS:
                levels = self.values.get(name)
                if name in GEOMETRIC:
                    out.append(affine_table)
                elif levels is None:
                    out.append(None)
                else:  # float32 factors as Pillow's C receives them; integer bits / thresholds
                    dtype = torch.float32 if name in FACTORS else torch.int64
                    out.append(torch.tensor([[[v], [v]] for v in levels], dtype=dtype, device=device))
            self._tables[key] = out
        return self._tables[key]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected a uint8 [N, H, W, C] batch, got {x.dtype} {tuple(x.shape)}")
        n, h, w, c = x.shape
        tables = self.tables(h, w, x.device)
        fill = torch.tensor(self.fill if len(self.fill) == c else [self.fill[0]] * c, dtype=torch.uint8,
                            device=x.device)
        for op, level, negative in self.draw(n, generator, x.device):
            x = apply_stage(x, op, level, negative, tables, fill)
        return x


def apply_stage(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, negative: torch.Tensor,
                tables: list[torch.Tensor | None], fill: torch.Tensor) -> torch.Tensor:
    """Image i gets operation ``OPS[op[i]]`` at ``level[i]`` (direction flipped where ``negative``):
    the images are grouped by operation, one batched call per operation present (one for all the
    geometric ones)."""
    group = _GROUP.to(op.device)[op]
    counts = torch.bincount(group, minlength=len(OPS)).tolist()  # the one host sync of a stage
    order = torch.argsort(group, stable=True)
    out = x.clone()
    start = 0
    for k, count in enumerate(counts):
        idx = order[start:start + count]
        start += count
        if count == 0 or OPS[k] == "Identity":
            continue
        table = tables[k]
        if OPS[k] in GEOMETRIC:
            params = table[op[idx], level[idx], negative[idx].long()]
        else:
            params = None if table is None else table[level[idx], negative[idx].long()]
        out.index_copy_(0, idx, _APPLY[OPS[k]](x.index_select(0, idx), params, fill))
    return out


class AutoAugment(Policy):
    """Each image picks one of the 25 CIFAR-10 sub-policies; each of its two operations is applied
    with its probability, at its level, in a random direction."""

    name = "autoaugment"

    def __init__(self):
        super().__init__(level_values(10, shear=0.3, translate=10, rotate=30, posterize=(0, 4),
                                      enhance_min=0.1, enhance_span=1.8), CIFAR10_MEAN_PIXEL)
        sub = AUTOAUGMENT_CIFAR10
        self._op = torch.tensor([[OP_INDEX[o] for o, _, _ in s] for s in sub])
        self._prob = torch.tensor([[p for _, p, _ in s] for s in sub])
        self._level = torch.tensor([[lv for _, _, lv in s] for s in sub])

    def draw(self, n, generator, device):
        choice = torch.randint(0, len(AUTOAUGMENT_CIFAR10), (n,), device=device, generator=generator)
        coin = torch.rand(n, 2, device=device, generator=generator)
        negative = torch.rand(n, 2, device=device, generator=generator) < 0.5
        op, prob, level = (t.to(device)[choice] for t in (self._op, self._prob, self._level))
        op = torch.where(coin < prob, op, OP_INDEX["Identity"])
        return [(op[:, j], level[:, j], negative[:, j]) for j in range(2)]


class RandAugment(Policy):
    """Each image draws ``num_ops`` operations (with replacement) from the 14, all at level
    ``magnitude`` (0..30), each in a random direction."""

    name = "randaugment"

    def __init__(self, num_ops: int = 2, magnitude: int = 9):
        if not 1 <= num_ops <= MAX_OPS or not 0 <= magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"RandAugment needs 1 <= num_ops <= {MAX_OPS} and 0 <= magnitude <= {MAX_MAGNITUDE}, "
                             f"got {num_ops}, {magnitude}")
        super().__init__(level_values(30, shear=0.3, translate=10, rotate=30, posterize=(4, 8),
                                      enhance_min=0.1, enhance_span=1.9 - 0.1), (0, 0, 0))
        self.num_ops, self.magnitude = int(num_ops), int(magnitude)
        self._ops = torch.tensor([OP_INDEX[o] for o in STANDARD_OPS])

    def __repr__(self) -> str:
        return f"randaugment(N={self.num_ops}, M={self.magnitude})"

    def draw(self, n, generator, device):
        pick = torch.randint(0, len(STANDARD_OPS), (n, self.num_ops), device=device, generator=generator)
        negative = torch.rand(n, self.num_ops, device=device, generator=generator) < 0.5
        op = self._ops.to(device)[pick]
        level = torch.full((n,), self.magnitude, device=device)
        return [(op[:, j], level, negative[:, j]) for j in range(self.num_ops)]


class TrivialAugment(Policy):
    """TrivialAugment-Wide: each image draws one of the 14 operations and one level in 0..30."""

    name = "trivialaugment"

    def __init__(self):
        super().__init__(level_values(30, shear=0.99, translate=32, rotate=135, posterize=(2, 8),
                                      enhance_min=0.01, enhance_span=2.0 - 0.01), (0, 0, 0))
        self._ops = torch.tensor([OP_INDEX[o] for o in STANDARD_OPS])

    def draw(self, n, generator, device):
        pick = torch.randint(0, len(STANDARD_OPS), (n,), device=device, generator=generator)
        level = torch.randint(0, 31, (n,), device=device, generator=generator)
        negative = torch.rand(n, device=device, generator=generator) < 0.5
        return [(self._ops.to(device)[pick], level, negative)]


def build_policy(name: str, num_ops: int = 2, magnitude: int = 9) -> Policy | None:
    """The policy called ``name`` (one of POLICIES; "none" -> None)."""
    if name == "none":
        return None
    if name == "autoaugment":
        return AutoAugment()
    if name == "randaugment":
        return RandAugment(num_ops, magnitude)
    if name == "trivialaugment":
        return TrivialAugment()
    raise ValueError(f"unknown policy {name!r}: use {' | '.join(POLICIES)}")
