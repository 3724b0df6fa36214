"""Building blocks shared by the residual nets: the pre-activation block over any kernel tuple,
squeeze-and-excitation, drop-path (stochastic depth), He init and argument checks.

The Wide ResNet (``wide_resnet.py``) and the pre-activation ResNet (``resnet.py``) are the same
block with different kernel tuples and channel plans: B(3,3) with width ``16k`` is the WRN basic
block, B(1,3,1) with a ``c/4`` middle width is He et al.'s pre-activation bottleneck.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

ALLOWED_KERNELS = (1, 3)


def block_name(kernels: Sequence[int]) -> str:
    """The paper's notation: ``(3, 1, 3)`` -> ``B(3,1,3)``."""
    return "B(" + ",".join(str(k) for k in kernels) + ")"


def check_block(block: Sequence[int]) -> tuple[int, ...]:
    """Validate a block type (a tuple of kernel sizes) and return it as a tuple of ints."""
    if isinstance(block, str):
        block = [s for s in block.replace("(", "").replace(")", "").split(",") if s.strip()]
    try:
        kernels = tuple(int(k) for k in block)
    except (TypeError, ValueError):
        raise ValueError(f"block {block!r} is not a tuple of kernel sizes: use e.g. (3, 3) or (3, 1, 3)") from None
    if not kernels:
        raise ValueError("block is empty: give at least one kernel size, e.g. (3, 3)")
    bad = [k for k in kernels if k not in ALLOWED_KERNELS]
    if bad:
        raise ValueError(f"block {kernels} has kernel size {bad[0]}: the paper's blocks use only 1 and 3, "
                         "e.g. (3, 3), (3, 1, 3), (1, 3, 1)")
    return kernels


def check_rate(name: str, value: float, hint: str) -> float:
    """A probability in [0, 1): dropout, stochastic-depth drop rate."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1): {hint}")
    return float(value)


def check_positive_int(name: str, value: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer: {hint}")
    return value


def drop_path_rates(num_blocks: int, last_rate: float) -> list[float]:
    """Stochastic depth's linear decay (Huang et al.): block l of L drops with rate l/L * last_rate,
    i.e. survival falls from ~1 at the input to p_L = 1 - last_rate at the last block."""
    return [last_rate * (i + 1) / num_blocks for i in range(num_blocks)]


DROP_PATH_MODES = ("batch", "sample")


def check_drop_path_mode(mode: str) -> str:
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"drop_path_mode={mode!r} is not one of {', '.join(DROP_PATH_MODES)}: 'batch' drops the "
                         "whole branch for the mini-batch (Huang et al.), 'sample' per image")
    return mode


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: drops it with probability ``rate`` while training.

    ``mode="batch"`` is Huang et al.'s: one coin per block per training step drops the branch for
    the whole mini-batch, a kept branch is used as it is, and at test time the branch is scaled by
    its survival probability 1 - rate (its expectation during training). ``mode="sample"`` (timm's
    drop_path) draws a coin per image and scales kept branches by 1/survival while training, so
    evaluation uses the branch as it is.

    A dropped branch is still computed and multiplied by 0 (Huang et al. skip it): one graph for
    every step (torch.compile, CUDA graphs), every parameter takes part (DDP), and the coin comes
    from torch's seeded RNG on the branch's device, with no host sync. So its BN running statistics
    also see the dropped steps. Under DDP each process draws its own coins for its slice.
    """

    def __init__(self, rate: float = 0.0, mode: str = "batch"):
        super().__init__()
        self.rate, self.mode = rate, check_drop_path_mode(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        if self.mode == "batch":
            if not self.training:
                return x * keep
            return x * x.new_empty(()).bernoulli_(keep)  # 0 or 1: exactly dropped or exactly kept
        if not self.training:
            return x
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}, mode={self.mode}"


class SqueezeExcite(nn.Module):
    """Channel gating (Hu et al.): pool -> 1x1 conv (c/r) -> ReLU -> 1x1 conv (c) -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # [N, C, 1, 1]
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """No bias: every conv is followed by a BN that has its own shift. Padding keeps odd sizes."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                     groups=groups, bias=False)


def stride_position(kernels: Sequence[int]) -> int:
    """Which conv of a block downsamples: the first 3x3 (a strided 1x1 would just drop 3/4 of the
    positions), or the first conv for blocks made only of 1x1 convs."""
    return next((i for i, k in enumerate(kernels) if k == 3), 0)


class PreActBlock(nn.Module):
    """Pre-activation residual block over any kernel tuple (He et al. 2016b; Zagoruyko & Komodakis).

    ``x -> BN -> ReLU -> conv_k0 -> [BN -> ReLU -> (dropout) -> conv_ki]... -> (SE) -> (drop-path) + shortcut``.
    The first BN-ReLU output feeds the shortcut too when it is a 1x1 projection (shape change).
    Every conv but the last has ``mid_channels`` outputs (``out_channels`` for WRN; ``out/4`` in the
    bottleneck); ``groups`` > 1 groups the 3x3 convs that map mid -> mid (ResNeXt-style).
    """

    def __init__(self, in_channels: int, out_channels: int, kernels: Sequence[int], *, stride: int = 1,
                 mid_channels: int | None = None, dropout: float = 0.0, groups: int = 1, se: bool = False,
                 drop_path: float = 0.0, drop_path_mode: str = "batch"):
        super().__init__()
        kernels = tuple(kernels)
        mid = mid_channels or out_channels
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        channels = in_channels
        at = stride_position(kernels)
        for i, k in enumerate(kernels):
            out = out_channels if i == len(kernels) - 1 else mid
            if i > 0:
                layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            g = groups if (i > 0 and k == 3 and channels == mid and out == mid) else 1
            layers.append(conv(channels, out, k, stride if i == at else 1, g))
            channels = out
        self.branch = nn.Sequential(*layers)
        self.se = SqueezeExcite(out_channels) if se else nn.Identity()
        self.drop_path = DropPath(drop_path, drop_path_mode)
        self.shortcut = (conv(in_channels, out_channels, 1, stride)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        return skip + self.drop_path(self.se(self.branch(o)))


def grouped_conv_count(kernels: Sequence[int], mid_is_out: bool) -> int:
    """How many convs of a block ``groups`` applies to (mid -> mid 3x3 convs after the first)."""
    return sum(1 for i, k in enumerate(kernels) if k == 3 and i > 0 and (mid_is_out or i < len(kernels) - 1))


def init_weights(model: nn.Module) -> None:
    """He init (kaiming normal, fan_out as in the reference code); BN weight 1, bias 0; linear
    layers keep PyTorch's default (uniform fan_in) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def check_groups(groups: int, channels: Sequence[int], kernels: Sequence[int], mid_is_out: bool) -> int:
    """``groups`` must divide every grouped conv's width and the block must have such a conv."""
    check_positive_int("groups", groups, "use 1 (plain convs) or a cardinality such as 2, 4, 8")
    if groups == 1:
        return groups
    if grouped_conv_count(kernels, mid_is_out) == 0:
        raise ValueError(f"groups={groups} needs a 3x3 conv after the first in the block, "
                         f"and {block_name(kernels)} has none: use groups=1 or a block such as (3, 3)")
    for c in channels:
        if c % groups:
            raise ValueError(f"groups={groups} does not divide the {c}-channel convs: "
                             f"use a divisor of {min(channels)}, e.g. 2 or 4")
    return groups


class Classifier(nn.Module):
    """timm's split of a classifier: ``forward_features`` (the subclass's: images -> activated
    feature map) then ``forward_head`` (global average pool ``self.pool`` -> linear ``self.fc``;
    ``pre_logits=True`` stops at the pooled features)."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PreActNet(Classifier):
    """Stem conv -> three groups of pre-activation blocks (the 2nd and 3rd start with stride 2)
    -> BN -> ReLU -> global average pool -> linear: the Wide ResNet and the pre-activation ResNet.

    Group ``g`` has ``blocks_per_group`` blocks of ``kernels`` with ``widths[g]`` output channels
    and ``mid_widths[g]`` inside (the same for WRN; a quarter in the bottleneck). Subclasses check
    their arguments and describe themselves; the network itself is built here only.
    """

    default_input_size = 32

    def __init__(self, *, in_channels: int, num_classes: int, stem_width: int, widths: Sequence[int],
                 mid_widths: Sequence[int], kernels: Sequence[int], blocks_per_group: int, dropout: float,
                 groups: int, se: bool, stochastic_depth: float, drop_path_mode: str):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        rates = drop_path_rates(len(widths) * blocks_per_group, stochastic_depth)
        self.conv1 = conv(in_channels, stem_width, 3)
        channels = stem_width
        stages: list[nn.Sequential] = []
        for g, (out, mid) in enumerate(zip(widths, mid_widths)):
            blocks = []
            for i in range(blocks_per_group):
                blocks.append(PreActBlock(channels, out, kernels, stride=2 if (g > 0 and i == 0) else 1,
                                          mid_channels=mid, dropout=dropout, groups=groups, se=se,
                                          drop_path=rates[g * blocks_per_group + i],
                                          drop_path_mode=drop_path_mode))
                channels = out
            stages.append(nn.Sequential(*blocks))
        # The paper's group names: conv2, conv3, conv4 (conv1 is the stem).
        self.conv2, self.conv3, self.conv4 = stages
        # The last block's sum is not yet activated (pre-activation): the head does BN-ReLU first.
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] images -> [N, widths[-1], H/4, W/4] activated feature map."""
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.act(self.bn(x))
