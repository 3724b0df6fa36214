"""Independent functional forwards of the foreign WRNs, written from the codebases' behaviour as
documented (not from their code, nor from wrn's modules), over state dicts in *their* key layouts.
Tests compare wrn's models against these, and build checkpoints in those layouts with them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bn_stats(sd: dict, prefix: str, c: int, g: torch.Generator) -> None:
    sd[prefix + "weight"] = 1 + 0.2 * torch.randn(c, generator=g)
    sd[prefix + "bias"] = 0.2 * torch.randn(c, generator=g)
    sd[prefix + "running_mean"] = 0.2 * torch.randn(c, generator=g)
    sd[prefix + "running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[prefix + "num_batches_tracked"] = torch.tensor(7)


def _conv(sd: dict, key: str, out: int, cin: int, k: int, g: torch.Generator, bias: bool) -> None:
    sd[key + ".weight"] = torch.randn(out, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5
    if bias:
        sd[key + ".bias"] = 0.1 * torch.randn(out, generator=g)


def plan(depth: int, width: int):
    """(group, block, in channels, out channels, stride) of every block of a WRN."""
    n = (depth - 4) // 6
    cin = 16
    for gi, w in enumerate((16 * width, 32 * width, 64 * width)):
        for i in range(n):
            yield gi, i, cin, w, 2 if (gi > 0 and i == 0) else 1
            cin = w


# -- the xternalz / TRADES WideResNet and the semi-supervised ones (the same key names) --------------

# A WRN's state dict in another codebase's key names: the same tensors, named per ``names``.
XTERNALZ_NAMES = dict(stem="conv1", block="block{g1}.layer.{i}.", bn1="bn1.", conv1="conv1", bn2="bn2.",
                      conv2="conv2", shortcut="convShortcut", bn="bn1.")
DM_NAMES = dict(stem="init_conv", block="layer.{g}.block.{i}.", bn1="batchnorm_0.", conv1="conv_0",
                bn2="batchnorm_1.", conv2="conv_1", shortcut="shortcut", bn="batchnorm.")


def wrn_state(names: dict, depth: int, width: int, classes: int, *, seed: int = 0, conv_bias: bool = False,
              stem_bias: bool = False, head: str = "fc", fc_bias: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict = {}
    _conv(sd, names["stem"], 16, 3, 3, g, stem_bias)
    for gi, i, cin, out, _ in plan(depth, width):
        p = names["block"].format(g=gi, g1=gi + 1, i=i)
        _bn_stats(sd, p + names["bn1"], cin, g)
        _conv(sd, p + names["conv1"], out, cin, 3, g, conv_bias)
        _bn_stats(sd, p + names["bn2"], out, g)
        _conv(sd, p + names["conv2"], out, out, 3, g, conv_bias)
        if cin != out:
            _conv(sd, p + names["shortcut"], out, cin, 1, g, conv_bias)
    _bn_stats(sd, names["bn"], 64 * width, g)
    sd[f"{head}.weight"] = 0.1 * torch.randn(classes, 64 * width, generator=g)
    if fc_bias:
        sd[f"{head}.bias"] = 0.1 * torch.randn(classes, generator=g)
    return sd


def xternalz_state(depth: int, width: int, classes: int, **kw) -> dict:
    return wrn_state(XTERNALZ_NAMES, depth, width, classes, **kw)


def ssl_state(depth: int, width: int, classes: int, codebase: str = "usb", seed: int = 0) -> dict:
    old = codebase != "usb"
    return xternalz_state(depth, width, classes, seed=seed, conv_bias=old, stem_bias=True,
                          head="fc" if old else "classifier")


def _bn(sd, p, x, training, momentum, eps):
    if training:
        sd[p + "num_batches_tracked"] += 1
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        training, momentum, eps)


def _c(sd, key, x, stride=1, padding=1):
    return F.conv2d(x, sd[key + ".weight"], sd.get(key + ".bias"), stride=stride, padding=padding)


def xternalz_forward(sd: dict, x: torch.Tensor, depth: int, width: int, training: bool = False, *,
                     act=F.relu, momentum: float = 0.1, block_eps: float = 1e-5, head_eps: float = 1e-5,
                     raw_transition_from: int = 3, head: str = "fc") -> torch.Tensor:
    """The paper's WRN as xternalz wrote it; with ``raw_transition_from=1`` the first blocks of the
    2nd and 3rd groups feed the raw input to the conv and the shortcut (USB, TorchSSL), computing
    (and discarding) their first BN-activation. ``sd``'s BN buffers update in training mode."""
    x = _c(sd, "conv1", x)
    for gi, i, cin, out, stride in plan(depth, width):
        p = f"block{gi + 1}.layer.{i}."
        a = act(_bn(sd, p + "bn1.", x, training, momentum, block_eps))
        if cin == out:
            inp, skip = a, x
        elif gi >= raw_transition_from:
            inp, skip = x, x
        else:
            inp, skip = a, a
        y = act(_bn(sd, p + "bn2.", _c(sd, p + "conv1", inp, stride), training, momentum, block_eps))
        y = _c(sd, p + "conv2", y)
        x = (skip if cin == out else _c(sd, p + "convShortcut", skip, stride, 0)) + y
    x = act(_bn(sd, "bn1.", x, training, momentum, head_eps))
    x = x.mean((2, 3))
    return F.linear(x, sd[f"{head}.weight"], sd.get(f"{head}.bias"))


def ssl_forward(sd: dict, x: torch.Tensor, depth: int, width: int, codebase: str = "usb", training: bool = False,
                raw_transition_from: int | None = None) -> torch.Tensor:
    if raw_transition_from is None:
        raw_transition_from = 3 if codebase == "usb-early" else 1
    return xternalz_forward(sd, x, depth, width, training, act=lambda t: F.leaky_relu(t, 0.1), momentum=0.001,
                            block_eps=1e-5 if codebase == "usb" else 1e-3, head_eps=1e-3,
                            raw_transition_from=raw_transition_from, head="classifier" if codebase == "usb" else "fc")


# -- DeepMind's DMWideResNet ------------------------------------------------------------------------

DM_MEAN = (0.4914, 0.4822, 0.4465)
DM_STD = (0.2471, 0.2435, 0.2616)


def dm_state(depth: int, width: int, classes: int, seed: int = 0) -> dict:
    return wrn_state(DM_NAMES, depth, width, classes, seed=seed, head="logits")


def dm_forward(sd: dict, x: torch.Tensor, depth: int, width: int, training: bool = False, *, act=F.relu,
               mean=DM_MEAN, std=DM_STD, symmetric_padding: bool = False) -> torch.Tensor:
    """[0, 1] images in; stride-2 3x3 convs pad right/bottom only (``symmetric_padding``: the wrong port)."""
    x = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    x = _c(sd, "init_conv", x)
    for gi, i, cin, out, stride in plan(depth, width):
        p = f"layer.{gi}.block.{i}."
        a = act(_bn(sd, p + "batchnorm_0.", x, training, 0.1, 1e-5))
        pad = (1, 1, 1, 1) if stride == 1 or symmetric_padding else (0, 1, 0, 1)
        y = _c(sd, p + "conv_0", F.pad(a, pad), stride, 0)
        y = _c(sd, p + "conv_1", act(_bn(sd, p + "batchnorm_1.", y, training, 0.1, 1e-5)))
        x = (x if cin == out else _c(sd, p + "shortcut", a, stride, 0)) + y
    x = act(_bn(sd, "batchnorm.", x, training, 0.1, 1e-5))
    x = F.avg_pool2d(x, 8).flatten(1)
    return F.linear(x, sd["logits.weight"], sd["logits.bias"])
