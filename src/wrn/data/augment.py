"""Batched augmentation on tensors, on whatever device the batch is: no per-image Python.

Reflect-pad + random crop and the horizontal flip are one gather: output pixel (i, j) of image n
reads input pixel (reflect(i + dy[n] - p), reflect(j' + dx[n] - p)) with j' = W - 1 - j for a
flipped image, where reflect() mirrors an index that falls outside the image like
``F.pad(mode="reflect")`` does. The gather runs on the uint8 batch (4x less memory traffic than
float), then one fused multiply-add converts and normalises - or, with ``whiten``, one matmul
applies a ZCA whitening (``wrn.data.zca``) to each flattened image instead.

The output's memory format is the one the model was prepared with (``accel.channels_last``):
the batch is computed in NHWC memory, so channels_last is a free view and NCHW costs one copy.
Callers feed the output to the model as is.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from wrn.data.zca import Whitening


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Mirror without repeating the edge pixel: -1 -> 1, size -> size - 2 (valid for pad < size).
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


class Augment:
    """``aug(x, generator)``: uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]``, in channels_last
    memory when ``channels_last`` else contiguous NCHW.

    Per image: a random crop of the ``crop_padding``-reflect-padded image (same size as the
    input), a horizontal flip with probability 0.5 (``flip``), then the ``policy`` if any (an
    automatic augmentation policy of ``wrn.data.policies``, on the uint8 pixels), then either
    ``(x / 255 - mean) / std`` or, given ``whiten`` (instead of mean/std), the fitted ZCA
    whitening; last a ``cutout``-pixel square set to zero (the mean) centred anywhere in the image.
    This is the order of the AutoAugment and TrivialAugment papers on CIFAR (crop + flip, the
    policy, cutout).
    ``crop_padding=0, flip=False`` only normalises (SVHN, evaluation). Deterministic given the
    generator, which lives on x's device.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        channels_last: bool = False,
        whiten: Whitening | None = None,
        policy: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    ):
        if whiten is not None:
            if mean is not None or std is not None:
                raise ValueError("give either mean/std or whiten: the whitening replaces the mean/std normalisation")
        elif mean is None or std is None or len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean}, {std}")
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding ({crop_padding}) and cutout ({cutout}) must be >= 0")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.channels_last = bool(channels_last)
        self.whiten = whiten
        self.policy = policy
        self._consts: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        norm = f"whiten={self.whiten!r}" if self.whiten is not None else f"mean={self.mean}, std={self.std}"
        policy = f", policy={self.policy!r}" if self.policy is not None else ""
        return (f"Augment({norm}, crop_padding={self.crop_padding}, flip={self.flip}, cutout={self.cutout}, "
                f"channels_last={self.channels_last}{policy})")

    @property
    def channels(self) -> int:
        return self.whiten.shape[-1] if self.whiten is not None else len(self.mean)

    def _scale_shift(self, device: torch.device, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        # (x / 255 - mean) / std == x * scale + shift, with scale and shift repeated along a whole
        # image row (W*C values): a broadcast over a size-3 last dim is ~10x slower on the CPU.
        key = (device, width)
        if key not in self._consts:
            std = torch.tensor(self.std, dtype=torch.float32)
            mean = torch.tensor(self.mean, dtype=torch.float32)
            scale, shift = (1.0 / (255.0 * std)).repeat(width), (-mean / std).repeat(width)
            self._consts[key] = (scale.to(device), shift.to(device))
        return self._consts[key]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, H, W, C]`` -> normalised (or whitened) float32 ``[N, C, H, W]`` in the
        requested memory format: evaluation's whole preprocessing."""
        return self._to_model_format(self._normalize_nhwc(x))

    def _normalize_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        # -> float32 [N, C, H, W] as a view of NHWC memory (channels_last strides).
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected a uint8 [N, H, W, C] batch, got {x.dtype} {tuple(x.shape)}")
        n, h, w, c = x.shape
        if c != self.channels:
            raise ValueError(f"batch has {c} channels, the normalisation has {self.channels}")
        if self.whiten is not None:
            out = self.whiten.apply(x.reshape(n, h * w * c))  # [N, H*W*C], HWC order as stored
        else:
            scale, shift = self._scale_shift(x.device, w)
            out = torch.addcmul(shift, x.reshape(n, h, w * c).float(), scale)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)

    def _to_model_format(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.channels_last else out.contiguous()

    def crop_flip(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The random crop + flip alone, still uint8 NHWC (exposed for tests and visualisation)."""
        n, h, w, c = x.shape
        p = self.crop_padding
        if p >= min(h, w):
            raise ValueError(f"crop_padding {p} must be smaller than the image ({h}x{w}) for reflect padding")
        dev = x.device
        dy = torch.randint(0, 2 * p + 1, (n, 1), device=dev, generator=generator) - p
        dx = torch.randint(0, 2 * p + 1, (n, 1), device=dev, generator=generator) - p
        rows = _reflect(torch.arange(h, device=dev) + dy, h)  # [N, H]
        cols = torch.arange(w, device=dev).expand(n, w)
        if self.flip:
            flipped = torch.rand(n, 1, device=dev, generator=generator) < 0.5
            cols = torch.where(flipped, w - 1 - cols, cols)
        cols = _reflect(cols + dx, w)  # [N, W]
        # Flat pixel index n*H*W + row*W + col, gathered as whole C-byte pixels.
        base = torch.arange(n, device=dev).view(n, 1, 1) * (h * w)
        flat = (base + rows.view(n, h, 1) * w + cols.view(n, 1, w)).view(-1)
        return x.reshape(n * h * w, c).index_select(0, flat).view(n, h, w, c)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected a uint8 [N, H, W, C] batch, got {x.dtype} {tuple(x.shape)}")
        if self.crop_padding or self.flip:
            x = self.crop_flip(x, generator)
        if self.policy is not None:  # draws after crop/flip, so runs without a policy are unchanged
            x = self.policy(x, generator)
        out = self._normalize_nhwc(x)
        if self.cutout:
            out.masked_fill_(self._cutout_hole(out.shape, x.device, generator), 0.0)
        return self._to_model_format(out)

    def _cutout_hole(self, shape: torch.Size, dev: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = shape
        s = self.cutout
        cy = torch.randint(0, h, (n, 1), device=dev, generator=generator)
        cx = torch.randint(0, w, (n, 1), device=dev, generator=generator)
        ys = torch.arange(h, device=dev)
        xs = torch.arange(w, device=dev)
        in_rows = (ys >= cy - s // 2) & (ys < cy - s // 2 + s)  # [N, H]
        in_cols = (xs >= cx - s // 2) & (xs < cx - s // 2 + s)  # [N, W]
        return in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)  # [N, 1, H, W], broadcast over C
