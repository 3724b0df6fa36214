"""The thin ResNets the paper compares against (CIFAR, 32x32 inputs).

- ``resnet-{depth}``: the original post-activation ResNet (He et al. 2016a), 6n+2 layers, widths
  16/32/64, shortcut option A (identity; stride-2 subsampling and zero-padded channels where the
  shape changes, no parameters) or B (1x1 projection conv + BN where the shape changes).
- ``preact-resnet-{depth}``: the pre-activation ResNet (He et al. 2016b) with basic blocks (6n+2)
  or bottleneck blocks 1x1 (c/4) -> 3x3 (c/4) -> 1x1 (c) with c = 64/128/256 (9n+2: 164, 1001).

Both take stochastic depth (Huang et al.: linear decay of survival to p_L = 1 - stochastic_depth,
the whole branch dropped per mini-batch; ``drop_path_mode="sample"`` drops it per image)
and squeeze-and-excitation; the pre-activation net also takes dropout and grouped 3x3 convs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn.models.layers import (Classifier, DropPath, PreActNet, SqueezeExcite, block_name, check_drop_path_mode,
                               check_groups, check_positive_int, check_rate, conv, drop_path_rates, init_weights)
from wrn.models.registry import register_model

WIDTHS = (16, 32, 64)
BOTTLENECK_WIDTHS = (64, 128, 256)  # block outputs; the inner convs have a quarter of these
# He et al. use bottlenecks for their deepest CIFAR nets (164, 1001) and basic blocks up to 110.
BOTTLENECK_FROM_DEPTH = 164


def _nearest(depth: int, step: int, offset: int, minimum: int) -> str:
    below = [d for d in range(depth - 1, minimum - 1, -1) if (d - offset) % step == 0][:1]
    above = [d for d in range(max(depth + 1, minimum), depth + step + 1) if (d - offset) % step == 0][:1]
    return ", ".join(str(d) for d in below + above)


def _blocks_per_group(depth: int, layers_per_block: int, what: str) -> int:
    step = 3 * layers_per_block
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
        raise ValueError(f"depth {depth} does not fit {what}: use {step}n+2, "
                         f"e.g. {_nearest(depth, step, 2, step + 2)}")
    return (depth - 2) // step


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero channels; no parameters."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """Post-activation block: conv-BN-ReLU-conv-BN, (SE), (drop-path), add shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str, *,
                 se: bool = False, drop_path: float = 0.0, drop_path_mode: str = "batch"):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_channels) if se else nn.Identity()
        self.drop_path = DropPath(drop_path, drop_path_mode)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(out_channels - in_channels, stride)
        else:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(self.conv1(x)))
        o = self.se(self.bn2(self.conv2(o)))
        return self.act(self.shortcut(x) + self.drop_path(o))


class ResNet(Classifier):
    """The original CIFAR ResNet: conv-BN-ReLU stem (16), three groups of n basic blocks, pool, linear."""

    default_input_size = 32

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "A", stochastic_depth: float = 0.0,
                 se: bool = False, in_channels: int = 3, drop_path_mode: str = "batch"):
        n = _blocks_per_group(depth, 2, "the original ResNet (basic blocks)")
        check_positive_int("num_classes", num_classes, "e.g. 10 for CIFAR-10, 100 for CIFAR-100")
        check_positive_int("in_channels", in_channels, "3 for RGB images")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut={shortcut!r} is not an option: use 'A' (zero-pad, no parameters) "
                             "or 'B' (1x1 projection)")
        stochastic_depth = check_rate("stochastic_depth", stochastic_depth,
                                      "it is the last block's drop rate 1 - p_L; Huang et al. use 0.5")
        check_drop_path_mode(drop_path_mode)
        super().__init__()
        self.depth, self.shortcut, self.blocks_per_group = depth, shortcut, n
        self.num_classes, self.in_channels = num_classes, in_channels
        rates = drop_path_rates(3 * n, stochastic_depth)
        self.conv1 = conv(in_channels, WIDTHS[0], 3)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.act = nn.ReLU(inplace=True)
        channels = WIDTHS[0]
        stages = []
        for g, out in enumerate(WIDTHS):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(channels, out, 2 if (g > 0 and i == 0) else 1, shortcut, se=se,
                                         drop_path=rates[g * n + i], drop_path_mode=drop_path_mode))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.conv2, self.conv3, self.conv4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        return self.conv4(self.conv3(self.conv2(x)))


    def describe(self) -> dict:
        return {
            "family": f"ResNet (original, post-activation, shortcut option {self.shortcut})",
            "block": "B(3,3) post-activation",
            "blocks_per_group": self.blocks_per_group,
            "groups": [
                {"name": "conv1", "layers": f"3x3 conv, {WIDTHS[0]}", "width": WIDTHS[0]},
                *({"name": name, "layers": f"{self.blocks_per_group} x B(3,3)", "blocks": self.blocks_per_group,
                   "width": w} for name, w in zip(("conv2", "conv3", "conv4"), WIDTHS)),
            ],
        }


class PreActResNet(PreActNet):
    """Pre-activation ResNet: basic B(3,3) blocks (6n+2) or bottleneck B(1,3,1) blocks (9n+2).

    ``bottleneck=None`` follows He et al.: bottlenecks from depth 164 on, basic blocks below.
    """

    def __init__(self, depth: int, num_classes: int = 10, bottleneck: bool | None = None, dropout: float = 0.0,
                 stochastic_depth: float = 0.0, se: bool = False, groups: int = 1, in_channels: int = 3,
                 drop_path_mode: str = "batch"):
        if bottleneck is None:
            bottleneck = isinstance(depth, int) and depth >= BOTTLENECK_FROM_DEPTH
        if bottleneck:
            n = _blocks_per_group(depth, 3, "the pre-activation bottleneck ResNet")
            kernels, widths, mids = (1, 3, 1), BOTTLENECK_WIDTHS, tuple(w // 4 for w in BOTTLENECK_WIDTHS)
        else:
            n = _blocks_per_group(depth, 2, "the pre-activation basic ResNet (for 9n+2 pass bottleneck=True)")
            kernels, widths, mids = (3, 3), WIDTHS, WIDTHS
        check_positive_int("num_classes", num_classes, "e.g. 10 for CIFAR-10, 100 for CIFAR-100")
        check_positive_int("in_channels", in_channels, "3 for RGB images")
        dropout = check_rate("dropout", dropout, "0 turns it off; the WRN paper uses 0.3")
        stochastic_depth = check_rate("stochastic_depth", stochastic_depth,
                                      "it is the last block's drop rate 1 - p_L; Huang et al. use 0.5")
        check_groups(groups, mids, kernels, mid_is_out=not bottleneck)
        check_drop_path_mode(drop_path_mode)
        super().__init__(in_channels=in_channels, num_classes=num_classes, stem_width=WIDTHS[0], widths=widths,
                         mid_widths=mids, kernels=kernels, blocks_per_group=n, dropout=dropout, groups=groups,
                         se=se, stochastic_depth=stochastic_depth, drop_path_mode=drop_path_mode)
        self.depth, self.bottleneck, self.blocks_per_group = depth, bool(bottleneck), n
        self.block, self.mid_widths, self.widths, self.dropout = kernels, mids, widths, dropout

    def describe(self) -> dict:
        name = "bottleneck " if self.bottleneck else ""
        inner = (lambda w, m: f"{self.blocks_per_group} x {block_name(self.block)} [{m}, {m}, {w}]") \
            if self.bottleneck else (lambda w, m: f"{self.blocks_per_group} x {block_name(self.block)}")
        return {
            "family": f"pre-activation ResNet ({name or 'basic '}blocks)",
            "block": block_name(self.block),
            "blocks_per_group": self.blocks_per_group,
            "dropout": self.dropout,
            "groups": [
                {"name": "conv1", "layers": f"3x3 conv, {WIDTHS[0]}", "width": WIDTHS[0]},
                *({"name": g, "layers": inner(w, m), "blocks": self.blocks_per_group, "width": w}
                  for g, w, m in zip(("conv2", "conv3", "conv4"), self.widths, self.mid_widths)),
            ],
        }


@register_model("resnet-{depth}", examples=("resnet-20", "resnet-32", "resnet-44", "resnet-56", "resnet-110",
                                            "resnet-1202"))
def resnet(depth: int, num_classes: int = 10, shortcut: str = "A", stochastic_depth: float = 0.0,
           se: bool = False, in_channels: int = 3, drop_path_mode: str = "batch") -> ResNet:
    """The original CIFAR ResNet, e.g. ``create_model("resnet-110")`` (option A shortcuts)."""
    return ResNet(depth, num_classes, shortcut, stochastic_depth, se, in_channels, drop_path_mode)


@register_model("preact-resnet-{depth}", examples=("preact-resnet-110", "preact-resnet-164", "preact-resnet-1001"))
def preact_resnet(depth: int, num_classes: int = 10, bottleneck: bool | None = None, dropout: float = 0.0,
                  stochastic_depth: float = 0.0, se: bool = False, groups: int = 1,
                  in_channels: int = 3, drop_path_mode: str = "batch") -> PreActResNet:
    """Pre-activation ResNet, e.g. ``create_model("preact-resnet-164")`` (bottleneck)."""
    return PreActResNet(depth, num_classes, bottleneck, dropout, stochastic_depth, se, groups, in_channels,
                        drop_path_mode)
