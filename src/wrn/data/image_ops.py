"""Pillow's image operations, batched: uint8 ``[N, H, W, C]`` in, the same out, any device.

Each function computes, for every image of the batch at once, what Pillow computes for one image
(``ImageOps``, ``ImageEnhance``, ``Image.transform``/``rotate`` with NEAREST resampling), with
Pillow's own arithmetic, so that the augmentation policies built on them (``wrn.data.policies``)
transform pixels exactly as the published Pillow implementations do:

- lookup-table operations (posterize, solarize, invert, autocontrast, equalize) use the same
  integer / float64 formulas as ``ImageOps`` builds its tables with;
- the enhancers blend with a degenerate image in float32 and truncate, as ``Image.blend`` does in
  C (single-precision alpha, one multiply and one add, no fused multiply-add), and the sharpness
  filter sums its 3x3 SMOOTH kernel row by row in float32 in Pillow's order;
- geometric operations sample the nearest pixel through Pillow's 16.16 fixed-point affine loop
  (``Geometry.c``: ``affine_fixed``), which is exact integer arithmetic here; the 6 coefficients
  come from the caller (``policies`` computes them on the host as ``Image.rotate`` does).

Parameters are per image: a tensor with one value (or one row) per image, on the batch's device.
"""

from __future__ import annotations

import torch

FIXED_ONE = 1 << 16  # 1.0 in Pillow's 16.16 fixed point


def _per_image(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return value.view(-1, *([1] * (x.dim() - 1)))


# -- lookup tables ---------------------------------------------------------------------------------

def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (0..8) bits of each value: ``v & ~(2 ** (8 - bits) - 1)``."""
    mask = (255 << (8 - bits.long())) & 255
    return x & _per_image(mask.to(torch.uint8), x)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the values >= ``threshold`` (0..256; 256 changes nothing)."""
    t = _per_image(threshold.to(torch.int16), x)
    return torch.where(x.to(torch.int16) < t, x, 255 - x)


def _value_index(x: torch.Tensor) -> torch.Tensor:
    """Flat ``(image * C + channel) * 256 + value`` per element: the bin of a per-image,
    per-channel histogram and the entry of a per-image, per-channel lookup table."""
    n, h, w, c = x.shape
    base = (torch.arange(n * c, device=x.device) * 256).view(n, 1, 1, c)
    return (base + x.long()).view(-1)


def _histograms(index: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """``[N, C, 256]`` int64 counts of each value per image and channel (Pillow's histogram())."""
    return torch.bincount(index, minlength=n * c * 256).view(n, c, 256)


def _apply_lut(x: torch.Tensor, index: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``lut`` ``[N, C, 256]`` (values already 0..255) applied per image and channel."""
    return lut.reshape(-1).to(torch.uint8).index_select(0, index).view(x.shape)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast(img)`` (cutoff 0): stretch each channel's [lo, hi] to [0, 255];
    ``int(v * scale + offset)`` in float64 as Pillow's Python table does."""
    index = _value_index(x)
    hist = _histograms(index, x.shape[0], x.shape[3])
    present = (hist > 0).to(torch.uint8)
    lo = present.argmax(-1, keepdim=True)  # the first present value
    hi = 255 - present.flip(-1).argmax(-1, keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1).double()
    offset = -lo.double() * scale
    values = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = (values * scale + offset).trunc().clamp(0, 255)
    lut = torch.where(hi > lo, lut, values)  # a single value: Pillow leaves the channel alone
    return _apply_lut(x, index, lut)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize(img)``: per channel, ``lut[i] = (step // 2 + #values below i) // step``
    with ``step = (count - count of the last present value) // 255``, in integers."""
    index = _value_index(x)
    hist = _histograms(index, x.shape[0], x.shape[3])
    values = torch.arange(256, device=x.device)
    last = 255 - (hist > 0).to(torch.uint8).flip(-1).argmax(-1, keepdim=True)
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, last)) // 255
    below = hist.cumsum(-1) - hist  # exclusive prefix sums
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)  # Image.point clips to 255
    # One present value, or too few pixels for a step: Pillow leaves the channel alone.
    return _apply_lut(x, index, torch.where(step > 0, lut, values))


# -- enhancers (ImageEnhance: blend with a degenerate image) -------------------------------------------

def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, x, factor)``: ``degenerate + factor * (x - degenerate)`` in
    float32, truncated and clipped to 0..255, as Pillow's C loop computes it."""
    d = degenerate.float()
    out = d + _per_image(factor.float(), x) * (x.float() - d)  # two roundings, as in C (no FMA)
    return out.clamp_(0, 255).to(torch.uint8)


def grey(x: torch.Tensor) -> torch.Tensor:
    """``img.convert("L")`` as ``[N, H, W, 1]`` uint8: ITU-R 601-2 luma in 16-bit fixed point."""
    if x.shape[-1] == 1:
        return x
    r, g, b = x.int().unbind(-1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(-1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(grey(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level, ``int(mean + 0.5)`` (ImageStat's float64 mean)."""
    g = grey(x)
    mean = g.flatten(1).long().sum(1).double() / g[0].numel()
    level = torch.floor(mean + 0.5).to(torch.uint8)
    return blend(_per_image(level, x).expand_as(x), x, factor)


_K1 = torch.tensor(1.0) / 13.0  # ImageFilter.SMOOTH: (1 1 1 / 1 5 1 / 1 1 1) / 13, in float32
_K5 = torch.tensor(5.0) / 13.0


def smooth(x: torch.Tensor) -> torch.Tensor:
    """``img.filter(ImageFilter.SMOOTH)``: the border rows and columns are kept; inside, 0.5 plus
    the three kernel rows (bottom, middle, top), each summed left to right, then truncated."""
    if x.shape[1] < 3 or x.shape[2] < 3:
        return x
    p = x.float()
    k1, k5 = _K1.item(), _K5.item()  # Python floats holding the float32 values exactly

    def row(r: torch.Tensor, centre: float) -> torch.Tensor:
        return (r[:, :, :-2] * k1 + r[:, :, 1:-1] * centre) + r[:, :, 2:] * k1

    ss = row(p[:, 2:], k1) + 0.5
    ss = ss + row(p[:, 1:-1], k5)
    ss = ss + row(p[:, :-2], k1)
    out = x.clone()
    out[:, 1:-1, 1:-1] = ss.clamp_(0, 255).to(torch.uint8)
    return out


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(smooth(x), x, factor)


# -- geometry ----------------------------------------------------------------------------------

def affine(x: torch.Tensor, coeffs: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``img.transform(size, AFFINE, data, NEAREST, fillcolor=fill)`` per image.

    ``coeffs`` is ``[N, 6]`` int64: Pillow's ``affine_fixed`` integers ``a0 a1 a2 a3 a4 a5`` (16.16
    fixed point, a2 and a5 already include the half-pixel offset), so output pixel (x, y) reads
    input pixel ``((a2 + y*a1 + x*a0) >> 16, (a5 + y*a4 + x*a3) >> 16)``; outside the image it is
    ``fill`` (``[C]`` uint8)."""
    n, h, w, c = x.shape
    dev = x.device
    a = coeffs.view(n, 6, 1, 1)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    col = (a[:, 2] + ys * a[:, 1] + xs * a[:, 0]) >> 16  # [N, H, W]; >> floors, like C's on int
    row = (a[:, 5] + ys * a[:, 4] + xs * a[:, 3]) >> 16
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    image = torch.arange(n, device=dev).view(n, 1, 1)
    flat = (image * h + row.clamp(0, h - 1)) * w + col.clamp(0, w - 1)
    out = x.reshape(n * h * w, c).index_select(0, flat.view(-1)).view(n, h, w, c)
    return torch.where(inside.unsqueeze(-1), out, fill.view(1, 1, 1, c))
