"""Every registered family: forward shapes at two sizes, backward reaches every parameter, no NaN,
deterministic eval, the timm-style feature/head split; plus the registry's own behaviour."""

import re

import pytest
import torch
import torch.nn as nn

from wrn import create_model, list_models
from wrn.models.imagenet import ImageNetResNet
from wrn.models.registry import register_model

# A tiny instance of each family (full sizes are only counted, in test_models.py). The ImageNet
# family runs through a 1-block-per-stage ImageNetResNet: the same code as resnet50/wide_resnet50_2.
FAMILIES = {
    r"wrn-\d+-\d+": [
        ("wrn-10-1", {}),
        ("wrn-10-2", {"dropout": 0.3, "se": True, "groups": 2, "stochastic_depth": 0.5, "num_classes": 7}),
        *(("wrn-10-1", {"block": b, "dropout": 0.2 if len(b) > 1 else 0.0})
          for b in [(3, 1, 3), (1, 3, 1), (1, 3), (3, 1), (3, 1, 1), (3,), (3, 3, 3), (3, 3, 3, 3)]),
        ("wrn-13-1", {"block": (3, 3, 3), "blocks_per_group": 1}),
    ],
    r"resnet-\d+": [("resnet-8", {}), ("resnet-8", {"shortcut": "B", "se": True, "stochastic_depth": 0.5}),
                    ("resnet-8", {"stochastic_depth": 0.5, "drop_path_mode": "sample"})],
    r"preact-resnet-\d+": [
        ("preact-resnet-8", {"dropout": 0.1}),
        ("preact-resnet-11", {"bottleneck": True, "groups": 2, "se": True, "stochastic_depth": 0.5}),
    ],
    r"dm-wrn-\d+-\d+": [("dm-wrn-10-1", {}), ("dm-wrn-10-2", {"activation": "silu", "num_classes": 7})],
    r"ssl-wrn-\d+-\d+": [("ssl-wrn-10-2", {}), ("ssl-wrn-16-1", {"codebase": "torchssl"}),
                          ("ssl-wrn-10-2", {"codebase": "usb-early"})],
    r"resnet50|wide_resnet50_2|wide_resnet101_2": [
        (ImageNetResNet, {"layers": (1, 1, 1, 1), "width_per_group": 16, "num_classes": 5}),
    ],
}
CASES = [case for cases in FAMILIES.values() for case in cases]


def build(name_or_cls, kwargs):
    torch.manual_seed(0)
    if isinstance(name_or_cls, str):
        return create_model(name_or_cls, **kwargs)
    return name_or_cls(**kwargs)


def case_id(case):
    name, kwargs = case
    name = name if isinstance(name, str) else name.__name__
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items()).replace(" ", "")


def test_every_listed_model_belongs_to_a_tested_family():
    for name in list_models():
        assert any(re.fullmatch(p, name) for p in FAMILIES), f"{name}: add a tiny case to FAMILIES"


@pytest.mark.parametrize("name", list_models())
def test_every_listed_model_builds_and_maps_images_to_logits(name):
    from wrn.models.flops import meta_forward

    with torch.device("meta"):
        model = create_model(name, num_classes=13)
    assert model.num_classes == 13
    assert model.model_args == {"name": name, "num_classes": 13}
    if sum(1 for _ in model.modules()) > 2000:
        return  # resnet-1202, preact-resnet-1001: even a shapes-only pass takes seconds; counted elsewhere
    shapes = {}
    for size in (32, 64):
        meta_forward(model, size, lambda n, m, out: shapes.__setitem__((size, n), tuple(out.shape)))
        assert shapes[(size, "")] == (1, 13)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_backward_shapes_and_gradients(case):
    model = build(*case)
    classes = model.num_classes
    size = getattr(model, "default_input_size", 32)
    x = torch.randn(2, 3, 32, 32)
    out = model.train()(x)
    assert out.shape == (2, classes)
    out.logsumexp(1).sum().backward()
    unused = getattr(model, "unused_parameters", [])  # ssl-wrn: BNs its reference computes and discards
    for pname, p in model.named_parameters():
        if pname in unused:
            assert p.grad is None, f"{pname} is unused in the reference's forward, yet a gradient reaches it"
            continue
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {pname}"
    model.eval()
    other = 64 if size == 224 else 40  # another resolution: the nets are resolution-agnostic
    with torch.no_grad():
        y = torch.randn(3, 3, other, other)
        a, b = model(y), model(y)
        assert a.shape == (3, classes) and torch.isfinite(a).all()
        assert torch.equal(a, b), "eval must be deterministic (dropout / drop-path off)"
        torch.testing.assert_close(model.forward_head(model.forward_features(y)), a)
        assert model.forward_head(model.forward_features(y), pre_logits=True).shape == (3, model.num_features)


@pytest.mark.parametrize("name, kwargs, message", [
    ("wrn-10-1", {"width": 2}, "no argument 'width'"),
    ("resnet-8", {"dropout": 0.3}, "no argument 'dropout'"),
    ("resnet-8", {"num_classes": -1}, "num_classes=-1"),
    ("preact-resnet-8", {"groups": 5}, "groups=5"),
    ("preact-resnet-8", {"bottleneck": True}, "9n\\+2"),
    ("resnet50", {"num_classes": 0}, "num_classes=0"),
    ("wide_resnet50_2", {"block": (3, 3)}, "no argument 'block'"),
])
def test_bad_constructor_arguments_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="unknown model 'wrn-28-1O': did you mean .*wrn-28-10"):
        create_model("wrn-28-1O")


def test_list_models_filters_by_pattern_and_duplicates_are_rejected():
    assert "wrn-28-10" in list_models("wrn-*")
    assert all(n.startswith("wrn-") for n in list_models("wrn-*"))
    assert {"resnet50", "wide_resnet50_2", "wide_resnet101_2", "resnet-110", "preact-resnet-164"} <= set(list_models())
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet50")(lambda **kw: nn.Identity())


@pytest.mark.parametrize("name, parsed", [("wrn-28-10", (28, 10)), ("wrn-40-1", (40, 1)), ("wrn-28-10x", None),
                                          ("wrn-28-10\n", None), ("preact-resnet-164", None), ("wrn-28", None)])
def test_wrn_names_parse_as_the_registry_reads_them(name, parsed):
    """One parse of WRN-n-k for the registry, the budget's narrowing and the sweep's scaling: a name
    the registry would not build is no WRN to them either."""
    from wrn.models.registry import is_model
    from wrn.models.wide_resnet import WRN_NAME, parse_wrn

    assert parse_wrn(name) == parsed
    if parsed:
        assert WRN_NAME.format(depth=parsed[0], width=parsed[1]) == name and is_model(name)
    elif name.startswith("wrn-"):
        assert not is_model(name)  # control: the registry refuses it too
