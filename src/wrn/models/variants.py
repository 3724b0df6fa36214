"""The field's WRNs, each computing what its source code computes, so their checkpoints load.

    dm-wrn-D-K   DeepMind's WRN as RobustBench ships it (``DMWideResNet``): Gowal et al. 2020,
                 Rebuffi et al. 2021, Wang et al. 2023 and most of RobustBench's top CIFAR entries.
    ssl-wrn-D-K  the semi-supervised benchmarks' WRN (FixMatch's, as USB and TorchSSL train it:
                 WRN-28-2 on CIFAR-10, WRN-28-8 on CIFAR-100).

Both are the paper's pre-activation B(3,3) WRN with other details, listed below; a port that
"fixes" one of them gives other outputs for the same checkpoint. Their module names are ours
(``conv1``, ``conv2..4.i.bn / branch.0 / branch.1 / branch.3 / shortcut``, ``bn``, ``fc``, as
``wrn-D-K``), so one key map per foreign layout (``models/layouts.py``) covers them all.

dm-wrn, against the paper's WRN:
  - activation ReLU or SiLU ("swish"), ``activation="relu"|"silu"``;
  - inputs in [0, 1], normalised inside the model by ``(x - mean) / std`` (RobustBench's CIFAR-10
    constants unless given others; its checkpoint files do not store them);
  - a block's stride-2 3x3 conv pads one zero row and column at the bottom and right only (the
    TensorFlow original's SAME padding at even sizes); every other 3x3 conv pads 1 on each side;
  - the pool is the reference's fixed 8x8 average. Where the last map is 8x8 (32x32 inputs, the
    only size the reference is defined for) it is that very op; at other sizes, where the
    reference's output would be malformed, the pool is global (resolution-agnostic), so the model
    still maps any image to one row of logits.

ssl-wrn (``codebase="usb"``, USB since its November 2022 network update, the default):
  - leaky ReLU (slope 0.1) everywhere;
  - BatchNorm momentum 0.001 in PyTorch's convention (the running statistics move 0.1% towards
    each batch's: the reference passes ``momentum=0.001`` to ``nn.BatchNorm2d``); eps 1e-5 in the
    blocks, 1e-3 in the final BN;
  - the stem conv has a bias; the other convs have none;
  - the first group's first block feeds its activated input to the conv and the 1x1 shortcut (as
    the paper's WRN), but the first blocks of the second and third groups feed both the *raw*
    input: the reference computes that block's first BN and activation and discards them. So here
    too, in training mode, that BN runs (its running statistics move as the reference's do) and its
    output is unused; its weight and bias get no gradient (``unused_parameters`` names them).
``codebase="torchssl"`` (TorchSSL): as USB, but every conv has a bias and the blocks' BN eps is 1e-3.
``codebase="usb-early"`` (USB before November 2022): as TorchSSL, but every transition block
feeds its activated input to both branches (as the paper's WRN). TorchSSL and early-USB files hold
the same keys; only the codebase that wrote them tells them apart.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn.models.layers import Classifier, check_positive_int, init_weights
from wrn.models.registry import match_name, register_model
from wrn.models.wide_resnet import GROUP_WIDTHS, STEM_WIDTH, depth_error, fits_depth

# RobustBench's CIFAR-10 constants (dm_wide_resnet.py): DMWideResNet's defaults.
ROBUSTBENCH_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
ROBUSTBENCH_CIFAR10_STD = (0.2471, 0.2435, 0.2616)
DM_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}
SSL_CODEBASES = ("usb", "torchssl", "usb-early")
SSL_BN_MOMENTUM = 0.001  # PyTorch's convention: new = 0.999 old + 0.001 batch (TF's decay 0.999)
SSL_LEAKY_SLOPE = 0.1
REFERENCE_POOL = 8  # dm-wrn: the reference's F.avg_pool2d(x, 8)


class SamePadConv2d(nn.Conv2d):
    """A 3x3 stride-2 conv that pads one zero row/column at the bottom/right only, as DeepMind's
    PyTorch port pads (F.pad(x, (0, 1, 0, 1)) then an unpadded conv). Its taps are centred on odd
    input positions where a pad-1 conv's are centred on even ones: the two differ for every weight."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 3, stride=2, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class VariantBlock(nn.Module):
    """B(3,3) pre-activation block under our key names: ``bn``, ``branch.0`` (3x3 conv),
    ``branch.1`` (BN), ``branch.3`` (3x3 conv), ``shortcut`` (1x1 conv where the width changes).

    ``raw_input``: in a transition block, the conv and the shortcut take the block's raw input and
    the first BN-activation is computed (training mode only: its running statistics) but unused.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, act: Callable[[], nn.Module],
                 bn: Callable[[int], nn.BatchNorm2d], bias: bool = False, same_pad: bool = False,
                 raw_input: bool = False):
        super().__init__()
        self.bn = bn(in_channels)
        self.act = act()
        first = (SamePadConv2d(in_channels, out_channels, bias) if same_pad and stride == 2 else
                 nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias))
        self.branch = nn.Sequential(first, bn(out_channels), act(),
                                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias))
        # As every reference: a projection exactly where the width changes (never for stride alone).
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
                         if in_channels != out_channels else None)
        self.raw_input = raw_input and self.shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raw_input:
            if self.training:
                self.bn(x)  # the reference's discarded BN: only its running statistics change
            return self.shortcut(x) + self.branch(x)
        o = self.act(self.bn(x))
        return (x if self.shortcut is None else self.shortcut(o)) + self.branch(o)


def _check_net(depth: int, width: int, num_classes: int, in_channels: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or not fits_depth(depth):
        raise ValueError(depth_error(depth, (3, 3)).replace(" (or pass blocks_per_group=N)", ""))
    check_positive_int("width", width, "the widening factor k, e.g. 10 for dm-wrn-28-10, 2 for ssl-wrn-28-2")
    check_positive_int("num_classes", num_classes, "e.g. 10 for CIFAR-10, 100 for CIFAR-100")
    check_positive_int("in_channels", in_channels, "3 for RGB images")
    return (depth - 4) // 6


class VariantWRN(Classifier):
    """Stem conv -> three groups of ``VariantBlock`` -> BN -> activation -> pool -> linear."""

    default_input_size = 32
    family = "WRN variant"

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, *,
                 act: Callable[[], nn.Module], bn: Callable[[int], nn.BatchNorm2d], head_bn: nn.BatchNorm2d | None = None,
                 stem_bias: bool = False, bias: bool = False, same_pad: bool = False, raw_from_group: int = 3):
        super().__init__()
        n = _check_net(depth, width, num_classes, in_channels)
        self.depth, self.width, self.blocks_per_group = depth, width, n
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, padding=1, bias=stem_bias)
        channels = STEM_WIDTH
        for g, w in enumerate(GROUP_WIDTHS):
            out = w * width
            blocks = []
            for i in range(n):
                blocks.append(VariantBlock(channels, out, 2 if (g > 0 and i == 0) else 1, act=act, bn=bn, bias=bias,
                                           same_pad=same_pad, raw_input=g >= raw_from_group))
                channels = out
            setattr(self, f"conv{g + 2}", nn.Sequential(*blocks))
        self.bn = head_bn if head_bn is not None else bn(channels)
        self.act = act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_weights(self)

    @property
    def unused_parameters(self) -> list[str]:
        """Parameters the reference's forward computes with but never uses (no gradient reaches them)."""
        return [f"{name}.bn.{p}" for name, m in self.named_modules()
                if isinstance(m, VariantBlock) and m.raw_input for p in ("weight", "bias")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.act(self.bn(x))

    def describe(self) -> dict:
        return {
            "family": self.family, "block": "B(3,3)", "blocks_per_group": self.blocks_per_group,
            "width_k": self.width, "dropout": 0.0,
            "groups": [
                {"name": "conv1", "layers": f"3x3 conv, {STEM_WIDTH}", "width": STEM_WIDTH},
                *({"name": f"conv{g + 2}", "layers": f"{self.blocks_per_group} x B(3,3)",
                   "blocks": self.blocks_per_group, "width": w * self.width} for g, w in enumerate(GROUP_WIDTHS)),
            ],
        }


def _channel_constants(name: str, values: Sequence[float], in_channels: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r} must be {in_channels} numbers, one per channel") from None
    if len(out) != in_channels:
        raise ValueError(f"{name}={values!r} must be {in_channels} numbers, one per channel")
    if name == "std" and any(v <= 0 for v in out):
        raise ValueError(f"std={values!r} must be positive")
    return out


class DMWideResNet(VariantWRN):
    """DeepMind's WRN (RobustBench's ``DMWideResNet``): takes [0, 1] images and normalises them itself."""

    family = "DeepMind WRN (RobustBench DMWideResNet)"

    def __init__(self, depth: int, width: int, num_classes: int = 10, activation: str = "relu",
                 mean: Sequence[float] = ROBUSTBENCH_CIFAR10_MEAN, std: Sequence[float] = ROBUSTBENCH_CIFAR10_STD,
                 in_channels: int = 3):
        if activation not in DM_ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of relu, silu (RobustBench's Swish is silu)")
        mean = _channel_constants("mean", mean, in_channels)
        std = _channel_constants("std", std, in_channels)
        super().__init__(depth, width, num_classes, in_channels, act=DM_ACTIVATIONS[activation], bn=nn.BatchNorm2d,
                         same_pad=True)
        self.activation = activation
        # Not in the state dict (the reference's are not either): they are constructor arguments. On
        # the CPU even when built on the meta device, so that a model built there and loaded with
        # load_state_dict(assign=True) (wrn import) is complete; .to(device) moves them as usual.
        self.register_buffer("mean", torch.tensor(mean, device="cpu").view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, device="cpu").view(-1, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features((x - self.mean) / self.std)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.shape[-2:] == (REFERENCE_POOL, REFERENCE_POOL):
            x = torch.flatten(F.avg_pool2d(x, REFERENCE_POOL), 1)  # the reference's op, bit for bit
            return x if pre_logits else self.fc(x)
        return super().forward_head(x, pre_logits)

    def describe(self) -> dict:
        act = {"relu": "ReLU", "silu": "SiLU"}[self.activation]
        return {**super().describe(), "activation": self.activation, "head": f"BN, {act}, 8x8 average pool, linear",
                "input": "[0, 1] pixels, normalised inside the model"}


class SSLWideResNet(VariantWRN):
    """The semi-supervised benchmarks' WRN (USB / TorchSSL / early USB; see the module docstring)."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, codebase: str = "usb", in_channels: int = 3):
        if codebase not in SSL_CODEBASES:
            raise ValueError(f"codebase={codebase!r} is not one of {', '.join(SSL_CODEBASES)}")
        old = codebase != "usb"  # TorchSSL and early USB: biases everywhere, eps 1e-3 in the blocks
        eps = 1e-3 if old else 1e-5

        def bn(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=eps, momentum=SSL_BN_MOMENTUM)

        super().__init__(depth, width, num_classes, in_channels,
                         act=lambda: nn.LeakyReLU(SSL_LEAKY_SLOPE, inplace=True), bn=bn,
                         head_bn=nn.BatchNorm2d(GROUP_WIDTHS[-1] * width, eps=1e-3, momentum=SSL_BN_MOMENTUM),
                         stem_bias=True, bias=old, raw_from_group=3 if codebase == "usb-early" else 1)
        self.codebase = codebase
        self.family = {"usb": "semi-supervised WRN (USB)", "torchssl": "semi-supervised WRN (TorchSSL)",
                       "usb-early": "semi-supervised WRN (USB before Nov 2022)"}[codebase]

    def describe(self) -> dict:
        return {**super().describe(), "activation": f"leaky ReLU {SSL_LEAKY_SLOPE}", "codebase": self.codebase,
                "head": f"BN, leaky ReLU {SSL_LEAKY_SLOPE}, global average pool, linear"}


DM_NAME = "dm-wrn-{depth}-{width}"


def normalizes_inside(name: str) -> bool:
    """The named model normalises its inputs itself (dm-wrn): data.mean/std would do it twice."""
    return match_name(DM_NAME, name) is not None


@register_model(DM_NAME, examples=("dm-wrn-28-10", "dm-wrn-34-20", "dm-wrn-70-16", "dm-wrn-106-16"))
def dm_wrn(depth: int, width: int, num_classes: int = 10, activation: str = "relu",
           mean: Sequence[float] = ROBUSTBENCH_CIFAR10_MEAN, std: Sequence[float] = ROBUSTBENCH_CIFAR10_STD,
           in_channels: int = 3) -> DMWideResNet:
    """DeepMind/RobustBench WRN, e.g. ``create_model("dm-wrn-70-16", activation="silu")``."""
    return DMWideResNet(depth, width, num_classes, activation, mean, std, in_channels)


@register_model("ssl-wrn-{depth}-{width}", examples=("ssl-wrn-28-2", "ssl-wrn-28-8"))
def ssl_wrn(depth: int, width: int, num_classes: int = 10, codebase: str = "usb", in_channels: int = 3) -> SSLWideResNet:
    """FixMatch-family WRN as USB/TorchSSL train it, e.g. ``create_model("ssl-wrn-28-2", codebase="torchssl")``."""
    return SSLWideResNet(depth, width, num_classes, codebase, in_channels)
