"""Wide Residual Networks for 32x32-class inputs (Zagoruyko & Komodakis, 2016): WRN-n-k.

    conv1  3x3 conv, 16 channels                        32x32
    conv2  N blocks, 16k channels                       32x32
    conv3  N blocks, 32k channels (first block stride 2) 16x16
    conv4  N blocks, 64k channels (first block stride 2)  8x8
    head   BN, ReLU, global average pool, linear         1x1

N = (n - 4) / 6 for every block type (the paper's naming); ``blocks_per_group`` overrides it, as the
deepening-factor table does (B(3,3,3) with N = 4 is the 40-layer, 2.2M-parameter WRN-40-2). With
the override, the name's depth is the net's layer count, 3 N l + 4 for blocks of l convs (as 6N + 4
is for B(3,3)), so that a name never hides a different net.
"""

from __future__ import annotations

from typing import Sequence

from wrn.models.layers import (PreActNet, block_name, check_block, check_drop_path_mode, check_groups,
                               check_positive_int, check_rate)
from wrn.models.registry import match_name, register_model

STEM_WIDTH = 16
GROUP_WIDTHS = (16, 32, 64)  # times the widening factor k


def fits_depth(depth: int) -> bool:
    return depth >= 10 and (depth - 4) % 6 == 0


def depth_error(depth: int, kernels: Sequence[int]) -> str:
    if isinstance(depth, bool) or not isinstance(depth, int):
        return f"depth {depth!r} is not an integer: use 6N+4, e.g. 16, 22, 28, 40"
    below = [d for d in range(depth - 1, 9, -1) if fits_depth(d)][:1]
    above = [d for d in range(max(depth + 1, 10), depth + 7) if fits_depth(d)][:1]
    examples = ", ".join(str(d) for d in below + above)
    return (f"depth {depth} does not fit block {tuple(kernels)}: use 6N+4, e.g. {examples} "
            f"(or pass blocks_per_group=N)")


def layer_count(blocks_per_group: int, kernels: Sequence[int]) -> int:
    """The depth of a net with N blocks of l convs per group: 3 N l convs in the blocks plus 4, as
    the paper counts B(3,3) nets (6N + 4): the stem and the three 1x1 shortcut convs (two when k = 1)."""
    return 3 * blocks_per_group * len(kernels) + 4


def check_depth_fits(depth: int, width: int, blocks_per_group: int, kernels: Sequence[int]) -> None:
    """With ``blocks_per_group`` set, the name's depth must be the net's layer count. Passing the
    name's own N = (depth - 4) / 6 (the paper's naming, any block) is the default made explicit."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(depth_error(depth, kernels))
    fits = layer_count(blocks_per_group, kernels)
    if depth == fits or (fits_depth(depth) and blocks_per_group == (depth - 4) // 6):
        return
    raise ValueError(f"depth {depth} does not match blocks_per_group={blocks_per_group} with block "
                     f"{block_name(kernels)}: that net has {fits} layers (3 groups x {blocks_per_group} blocks "
                     f"x {len(kernels)} convs + 4), so name it wrn-{fits}-{width}")


class WideResNet(PreActNet):
    """WRN-``depth``-``width`` with pre-activation blocks of kernel sizes ``block``.

    ``dropout`` sits between the convs of a block (never on the shortcut); ``stochastic_depth`` is
    the drop rate of the last block (1 - p_L, linear decay from the input), the whole branch per
    mini-batch as Huang et al. (``drop_path_mode="sample"``: per image); ``se`` adds
    squeeze-and-excitation; ``groups`` groups the 3x3 convs after a block's first (ResNeXt-style).
    """

    def __init__(self, depth: int, width: int, num_classes: int = 10, block: Sequence[int] = (3, 3),
                 dropout: float = 0.0, blocks_per_group: int | None = None, stochastic_depth: float = 0.0,
                 se: bool = False, groups: int = 1, in_channels: int = 3, drop_path_mode: str = "batch"):
        kernels = check_block(block)
        check_positive_int("width", width, "the widening factor k is 1 (thin ResNet) or more, e.g. wrn-28-10")
        check_positive_int("num_classes", num_classes, "e.g. 10 for CIFAR-10, 100 for CIFAR-100")
        check_positive_int("in_channels", in_channels, "3 for RGB images")
        dropout = check_rate("dropout", dropout, "the paper uses 0.3 (CIFAR) or 0.4 (SVHN); 0 turns it off")
        stochastic_depth = check_rate("stochastic_depth", stochastic_depth,
                                      "it is the last block's drop rate 1 - p_L; Huang et al. use 0.5")
        if dropout > 0 and len(kernels) < 2:
            raise ValueError(f"dropout={dropout} needs two or more convs per block (it sits between them) "
                             f"and {block_name(kernels)} has one: use dropout=0 or a block such as (3, 3)")
        if blocks_per_group is None:
            if isinstance(depth, bool) or not isinstance(depth, int) or not fits_depth(depth):
                raise ValueError(depth_error(depth, kernels))
            blocks_per_group = (depth - 4) // 6
        else:
            check_positive_int("blocks_per_group", blocks_per_group,
                               "the deepening table uses 36 / (3 l), e.g. 4 for block (3, 3, 3)")
            check_depth_fits(depth, width, blocks_per_group, kernels)
        check_drop_path_mode(drop_path_mode)
        widths = [w * width for w in GROUP_WIDTHS]
        check_groups(groups, widths, kernels, mid_is_out=True)
        super().__init__(in_channels=in_channels, num_classes=num_classes, stem_width=STEM_WIDTH,
                         widths=widths, mid_widths=widths, kernels=kernels, blocks_per_group=blocks_per_group,
                         dropout=dropout, groups=groups, se=se, stochastic_depth=stochastic_depth,
                         drop_path_mode=drop_path_mode)
        self.depth, self.width, self.block = depth, width, kernels
        self.blocks_per_group, self.dropout = blocks_per_group, dropout

    def describe(self) -> dict:
        """The architecture in the paper's terms (``wrn info`` adds output sizes, params, FLOPs)."""
        return {
            "family": "Wide ResNet (pre-activation)",
            "block": block_name(self.block),
            "deepening_l": len(self.block),
            "blocks_per_group": self.blocks_per_group,
            "width_k": self.width,
            "dropout": self.dropout,
            "groups": [
                {"name": "conv1", "layers": f"3x3 conv, {STEM_WIDTH}", "width": STEM_WIDTH},
                *({"name": name, "layers": f"{self.blocks_per_group} x {block_name(self.block)}",
                   "blocks": self.blocks_per_group, "width": w}
                  for name, w in zip(("conv2", "conv3", "conv4"), (w * self.width for w in GROUP_WIDTHS))),
            ],
        }


WRN_NAME = "wrn-{depth}-{width}"  # the paper's WRN-n-k: depth n, widening factor k


def parse_wrn(name: str) -> tuple[int, int] | None:
    """(depth, width k) of a WRN's name, e.g. ``wrn-28-10`` -> (28, 10); None for other nets."""
    fields = match_name(WRN_NAME, name)
    return (fields["depth"], fields["width"]) if fields else None


@register_model(WRN_NAME, examples=(
    "wrn-16-4", "wrn-16-8", "wrn-16-10", "wrn-22-8", "wrn-22-10", "wrn-28-10", "wrn-28-12",
    "wrn-40-1", "wrn-40-2", "wrn-40-4", "wrn-40-8", "wrn-40-10", "wrn-52-1"))
def wide_resnet(depth: int, width: int, num_classes: int = 10, block: Sequence[int] = (3, 3),
                dropout: float = 0.0, blocks_per_group: int | None = None, stochastic_depth: float = 0.0,
                se: bool = False, groups: int = 1, in_channels: int = 3,
                drop_path_mode: str = "batch") -> WideResNet:
    """WRN-depth-width, e.g. ``create_model("wrn-28-10", dropout=0.3)``."""
    return WideResNet(depth, width, num_classes, block, dropout, blocks_per_group, stochastic_depth,
                      se, groups, in_channels, drop_path_mode)
