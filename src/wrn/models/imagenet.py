"""ImageNet-class bottleneck ResNets in torchvision's state-dict layout, and a weights loader.

WRN-50-2-bottleneck is ResNet-50 with the bottleneck's inner width doubled (torchvision's
``wide_resnet50_2``). The module names here are torchvision's, so its checkpoints and timm's
load with ``strict=True``::

    conv1 bn1 | layer{1..4}.{i}.conv1 bn1 conv2 bn2 conv3 bn3 [downsample.0 (1x1 conv) downsample.1 (BN)] | fc

Stride sits on the 3x3 conv (torchvision's "ResNet v1.5"). No torchvision import: it is not a
dependency (its PyPI wheel fails to import beside CPU-only torch, and the CUDA build is ~5 GB).
"""

from __future__ import annotations

import os
import pickle
from typing import Sequence

import torch
import torch.nn as nn

from wrn.errors import UserError
from wrn.models.layers import Classifier, check_positive_int, init_weights
from wrn.models.registry import register_model

EXPANSION = 4
PLANES = (64, 128, 256, 512)


class Bottleneck(nn.Module):
    """1x1 (inner) -> 3x3 (inner, stride) -> 1x1 (4 x planes), post-activation, as torchvision."""

    def __init__(self, in_channels: int, planes: int, stride: int, inner: int):
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(out))
                           if stride != 1 or in_channels != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        o = self.relu(self.bn1(self.conv1(x)))
        o = self.relu(self.bn2(self.conv2(o)))
        o = self.bn3(self.conv3(o))
        return self.relu(o + identity)


class ImageNetResNet(Classifier):
    """Bottleneck ResNet for 224x224 inputs; ``width_per_group=128`` makes it wide (WRN-50-2)."""

    default_input_size = 224

    def __init__(self, layers: Sequence[int], width_per_group: int = 64, num_classes: int = 1000,
                 in_channels: int = 3, zero_init_residual: bool = False):
        check_positive_int("num_classes", num_classes, "e.g. 1000 for ImageNet")
        check_positive_int("in_channels", in_channels, "3 for RGB images")
        check_positive_int("width_per_group", width_per_group, "64 for ResNet-50, 128 for WRN-50-2")
        if len(layers) != 4:
            raise ValueError(f"layers={tuple(layers)} must give 4 block counts, e.g. (3, 4, 6, 3) for 50 layers")
        for n in layers:
            check_positive_int("layers[i]", n, "e.g. (3, 4, 6, 3) for 50 layers")
        super().__init__()
        self.layers, self.width_per_group = tuple(layers), width_per_group
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for g, (planes, n) in enumerate(zip(PLANES, layers)):
            inner = planes * width_per_group // 64
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(channels, planes, 2 if (g > 0 and i == 0) else 1, inner))
                channels = planes * EXPANSION
            setattr(self, f"layer{g + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)  # torchvision's avgpool (no weights: the keys match)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_weights(self)
        nn.init.uniform_(self.fc.bias, -channels ** -0.5, channels ** -0.5)  # nn.Linear's default, as torchvision
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al.): helps very large-batch training.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


    def describe(self) -> dict:
        wide = self.width_per_group // 64
        return {
            "family": "ImageNet bottleneck ResNet (torchvision layout)" + (f", inner width x{wide}" if wide > 1 else ""),
            "block": "bottleneck B(1,3,1) post-activation",
            "blocks_per_group": list(self.layers),
            "groups": [
                {"name": "conv1", "layers": "7x7 conv, 64, stride 2; 3x3 max pool, stride 2", "width": 64},
                *({"name": f"layer{g + 1}",
                   "layers": f"{n} x [1x1 {p * self.width_per_group // 64}, 3x3 {p * self.width_per_group // 64}, "
                             f"1x1 {p * EXPANSION}]",
                   "blocks": n, "width": p * EXPANSION}
                  for g, (p, n) in enumerate(zip(PLANES, self.layers))),
            ],
        }


@register_model("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ImageNetResNet:
    """ResNet-50 (25.6M params), torchvision layout."""
    return ImageNetResNet((3, 4, 6, 3), 64, num_classes, in_channels, zero_init_residual)


@register_model("wide_resnet50_2")
def wide_resnet50_2(num_classes: int = 1000, in_channels: int = 3,
                    zero_init_residual: bool = False) -> ImageNetResNet:
    """WRN-50-2-bottleneck (68.9M params), torchvision layout."""
    return ImageNetResNet((3, 4, 6, 3), 128, num_classes, in_channels, zero_init_residual)


@register_model("wide_resnet101_2")
def wide_resnet101_2(num_classes: int = 1000, in_channels: int = 3,
                     zero_init_residual: bool = False) -> ImageNetResNet:
    """WRN-101-2-bottleneck (126.9M params), torchvision layout."""
    return ImageNetResNet((3, 4, 23, 3), 128, num_classes, in_channels, zero_init_residual)


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} not found: give the path of a .pth or .safetensors file")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except SafetensorError as e:
            raise UserError(f"{path} is not a readable safetensors file ({e}): re-download or re-save it") from None
    try:
        # weights_only: a checkpoint file must never run code on load.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise UserError(f"{path} is not a plain weights file ({str(e).splitlines()[0]}): save "
                        "model.state_dict() with torch.save, or use .safetensors") from None
    # Training checkpoints often wrap the weights: {"state_dict": ...}, {"model": ...}.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors: save model.state_dict()")
    return obj


def load_external_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a torchvision/timm-style state dict (``.pth``/``.pt``/``.bin`` or ``.safetensors``) strictly.

    A missing, unexpected or wrongly-shaped tensor is a UserError that names it. A ``module.``
    prefix (DDP) is stripped; BN's ``num_batches_tracked`` may be absent (timm omits it).
    """
    path = os.fspath(path)
    state = _read_state_dict(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    for key, want in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                state[key] = want
                continue
            raise UserError(f"tensor {key!r} {tuple(want.shape)} is missing from {path}: the file was saved "
                            f"from a different architecture than {getattr(model, 'model_args', {}).get('name', type(model).__name__)}")
        got = state[key]
        if got.shape != want.shape:
            hint = (f"build the model with num_classes={got.shape[0]}" if key.startswith("fc.")
                    else "the file is for a different depth or width")
            raise UserError(f"tensor {key!r} has shape {tuple(got.shape)} in {path} but the model expects "
                            f"{tuple(want.shape)}: {hint}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise UserError(f"tensor {extra[0]!r} in {path} has no place in the model ({len(extra)} unexpected): "
                        "the file was saved from a different architecture")
    model.load_state_dict(state, strict=True)
    return model
