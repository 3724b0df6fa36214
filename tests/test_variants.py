"""dm-wrn and ssl-wrn compute what their reference codebases compute, for the same weights, in
eval and train mode (outputs, BN running statistics), and a plausible wrong port does not."""

import copy

import pytest
import torch
import torch.nn.functional as F

from reference_nets import (dm_forward, dm_state, ssl_forward, ssl_state, xternalz_forward,  # tests/reference_nets.py
                            xternalz_state)
from wrn import create_model
from wrn.models import layouts

pytestmark = pytest.mark.usefixtures("one_thread")

# (depth, width): one block per group with a projection in group 1; two blocks per group where
# group 1's first block keeps 16 channels (k = 1: no projection, identity shortcut).
NETS = [(10, 2), (16, 1)]


def params(name, **kwargs):
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, **kwargs).parameters())


@pytest.mark.parametrize("name, kwargs, count", [
    ("dm-wrn-28-10", {}, 36_479_194),  # the same tensors as the paper's WRN-28-10
    ("dm-wrn-70-16", {"activation": "silu"}, 266_796_506),  # RobustBench's "267M" WRN-70-16
    ("ssl-wrn-28-2", {}, 1_467_626),  # FixMatch's "1.5M" WRN-28-2 (USB: biasless convs, stem bias)
    ("ssl-wrn-28-8", {"num_classes": 100}, 23_401_028),  # USB's CIFAR-100 net: 23,354,858 + 90 x 513
    ("ssl-wrn-28-2", {"codebase": "torchssl"}, 1_469_642),  # + a bias on every conv
])
def test_parameter_counts(name, kwargs, count):
    assert params(name, **kwargs) == count


def load(name, foreign, layout, **kwargs):
    model = create_model(name, **kwargs)
    ours, _, unmapped = layouts.to_ours(layout, foreign)
    assert not unmapped
    model.load_state_dict(ours, strict=True)
    return model


def images(n=4, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_stats_equal(model, layout, expected):
    got = layouts.from_ours(layout, model.state_dict())
    for key, value in expected.items():
        if "running" in key or "num_batches" in key:
            torch.testing.assert_close(got[key], value, msg=f"{key} after one training step")


@pytest.mark.parametrize("depth, width", NETS)
@pytest.mark.parametrize("activation, act", [("relu", F.relu), ("silu", F.silu)])
def test_dm_wrn_matches_the_reference_forward(depth, width, activation, act):
    sd = dm_state(depth, width, 5)
    model = load(f"dm-wrn-{depth}-{width}", sd, "dm", num_classes=5, activation=activation)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), dm_forward(dm_state(depth, width, 5), x, depth, width, act=act))
        ref = dm_state(depth, width, 5)
        out = model.train()(x)
        torch.testing.assert_close(out, dm_forward(ref, x, depth, width, training=True, act=act))
    assert_stats_equal(model, "dm", ref)


def test_dm_wrn_takes_its_normalisation_as_arguments():
    depth, width, mean, std = 10, 1, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    sd = dm_state(depth, width, 3)
    model = load("dm-wrn-10-1", sd, "dm", num_classes=3, mean=mean, std=std).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), dm_forward(sd, x, depth, width, mean=mean, std=std))
    assert "mean" not in model.state_dict()  # constructor arguments, as the reference's buffers


def test_symmetric_padding_is_a_different_function():
    # The control: a port that pads the stride-2 convs on all sides (a "plausible" PyTorch port)
    # differs from the reference, so the test above would catch it.
    depth, width = 10, 2
    sd = dm_state(depth, width, 5)
    model = load("dm-wrn-10-2", sd, "dm", num_classes=5).eval()
    x = images()
    with torch.no_grad():
        wrong = dm_forward(sd, x, depth, width, symmetric_padding=True)
        assert (model(x) - wrong).abs().max() > 1e-3
        # ... and the paper's WRN (xternalz) on the same weights differs too.
        paper = load("wrn-10-2", sd, "dm", num_classes=5, dropout=0.0)
        assert (paper(x) - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize("depth, width", NETS)
@pytest.mark.parametrize("codebase", ["usb", "torchssl", "usb-early"])
def test_ssl_wrn_matches_the_reference_forward(depth, width, codebase):
    layout = {"usb": "ssl", "torchssl": "ssl-torchssl", "usb-early": "ssl-usb-early"}[codebase]
    model = load(f"ssl-wrn-{depth}-{width}", ssl_state(depth, width, 5, codebase), layout, num_classes=5,
                 codebase=codebase)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ssl_forward(ssl_state(depth, width, 5, codebase), x, depth, width,
                                                               codebase))
        ref = ssl_state(depth, width, 5, codebase)
        out = model.train()(x)
        torch.testing.assert_close(out, ssl_forward(ref, x, depth, width, codebase, training=True))
    # Includes the discarded BN of USB's raw-input transition blocks: its statistics still move.
    assert_stats_equal(model, layout, ref)


def test_usb_raw_input_transitions_are_not_the_papers_blocks():
    # The control: feeding the activated input to the shortcut (the paper's WRN, a "fixed" port)
    # gives other outputs for a USB checkpoint.
    depth, width = 10, 2
    sd = ssl_state(depth, width, 5, "usb")
    model = load("ssl-wrn-10-2", sd, "ssl", num_classes=5).eval()
    x = images()
    with torch.no_grad():
        wrong = ssl_forward(sd, x, depth, width, "usb", raw_transition_from=3)
        assert (model(x) - wrong).abs().max() > 1e-3


def test_ssl_bn_momentum_is_pytorchs_0_001():
    model = create_model("ssl-wrn-10-1")
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.001}
    assert model.bn.eps == 1e-3 and model.conv2[0].bn.eps == 1e-5
    assert model.conv1.bias is not None and model.conv2[0].branch[0].bias is None
    assert model.unused_parameters == ["conv3.0.bn.weight", "conv3.0.bn.bias", "conv4.0.bn.weight", "conv4.0.bn.bias"]


def test_xternalz_layout_is_the_papers_wrn():
    depth, width = 16, 1
    sd = xternalz_state(depth, width, 5)
    model = load("wrn-16-1", sd, "xternalz", num_classes=5, dropout=0.0)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), xternalz_forward(copy.deepcopy(sd), x, depth, width))


@pytest.mark.parametrize("name, kwargs, message", [
    ("dm-wrn-28-10", {"activation": "gelu"}, "relu, silu"),
    ("dm-wrn-28-10", {"mean": (0.5, 0.5)}, "3 numbers"),
    ("dm-wrn-27-10", {}, r"use 6N\+4, e.g. 22, 28$"),
    ("ssl-wrn-28-2", {"codebase": "fixmatch"}, "usb, torchssl, usb-early"),
])
def test_bad_arguments_say_the_fix(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_dm_wrn_pools_like_the_reference_at_32_and_globally_elsewhere():
    model = create_model("dm-wrn-10-1").eval()
    with torch.no_grad():
        assert model(images(2, 32)).shape == (2, 10)
        assert model(images(2, 48)).shape == (2, 10)
