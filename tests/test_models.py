"""The model family against the paper: parameter counts, block structure, dropout placement, init."""

import json

import pytest
import torch
import torch.nn as nn

from wrn import create_model
from wrn.models.layers import DropPath, PreActBlock, SqueezeExcite
from wrn.models.resnet import ZeroPadShortcut


def params(name, **kwargs):
    with torch.device("meta"):  # counting needs shapes only: instant even for WRN-101-2
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def conv_layers(model):
    se = {id(m) for s in model.modules() if isinstance(s, SqueezeExcite) for m in s.modules()}
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in se)


def test_wrn_28_10_has_exactly_the_papers_parameter_count():
    assert params("wrn-28-10") == 36_479_194


@pytest.mark.parametrize("name, millions", [
    ("wrn-16-4", 2.75), ("wrn-16-8", 11.0), ("wrn-22-8", 17.2), ("wrn-40-4", 8.9), ("wrn-40-10", 55.8),
    ("wrn-40-1", 0.6), ("wrn-40-2", 2.2), ("wrn-40-8", 35.7), ("wrn-28-12", 52.5), ("wrn-22-10", 26.8),
    ("wrn-16-10", 17.1),
])
def test_depth_width_table_parameter_counts(name, millions):
    assert params(name) / 1e6 == pytest.approx(millions, abs=0.051)


@pytest.mark.parametrize("block, depth, millions", [
    ((1, 3, 1), 40, 1.429), ((3, 1), 40, 1.211), ((1, 3), 40, 1.297), ((3, 1, 1), 40, 1.343),
    ((3, 3), 28, 1.468), ((3, 1, 3), 22, 1.145),
])
def test_block_type_table_keeps_n_blocks_per_group_and_matches_the_paper(block, depth, millions):
    assert params(f"wrn-{depth}-2", block=block) / 1e6 == pytest.approx(millions, abs=0.01)
    with torch.device("meta"):
        model = create_model(f"wrn-{depth}-2", block=block)
    assert len(model.conv2) == (depth - 4) // 6


@pytest.mark.parametrize("block, n", [((3,), 12), ((3, 3), 6), ((3, 3, 3), 4), ((3, 3, 3, 3), 3)])
def test_deepening_table_nets_have_40_conv_layers_and_2_2m_params(block, n):
    with torch.device("meta"):
        model = create_model("wrn-40-2", block=block, blocks_per_group=n)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(2.244, abs=0.001)
    assert conv_layers(model) == 40


@pytest.mark.parametrize("name, millions, tol", [
    ("preact-resnet-164", 1.7, 0.05), ("preact-resnet-1001", 10.2, 0.15), ("resnet-110", 1.7, 0.05),
    ("resnet-20", 0.27, 0.005), ("resnet-1202", 19.4, 0.1),
    ("resnet50", 25.557032, 0), ("wide_resnet50_2", 68.883240, 0), ("wide_resnet101_2", 126.886696, 0),
])
def test_baseline_parameter_counts(name, millions, tol):
    assert params(name) / 1e6 == pytest.approx(millions, abs=tol + 1e-7)


def test_blocks_per_group_must_match_the_depth_in_the_name():
    with pytest.raises(ValueError, match=r"^depth 41 does not match blocks_per_group=4 with block B\(3,3\): that "
                                         r"net has 28 layers \(3 groups x 4 blocks x 2 convs \+ 4\), so name it "
                                         r"wrn-28-2$"):
        create_model("wrn-41-2", blocks_per_group=4)
    with pytest.raises(ValueError, match=r"has 40 layers .* name it wrn-40-2$"):
        create_model("wrn-41-2", block=(3, 3, 3), blocks_per_group=4)
    with pytest.raises(ValueError, match="name it wrn-40-2"):
        create_model("wrn-28-2", block=(3, 3, 3, 3), blocks_per_group=3)
    with torch.device("meta"):  # control: the names that fit build (the deepening table is tested above)
        assert len(create_model("wrn-28-2", blocks_per_group=4).conv2) == 4
        # The paper's naming made explicit: N = (40 - 4) / 6 whatever the block.
        assert len(create_model("wrn-40-2", block=(1, 3, 1), blocks_per_group=6).conv2) == 6


def test_depth_that_does_not_fit_names_the_nearest_valid_depths():
    with pytest.raises(ValueError, match=r"depth 27 does not fit block \(3, 3\): use 6N\+4, e.g. 22, 28"):
        create_model("wrn-27-2")
    with pytest.raises(ValueError, match=r"use 9n\+2, e.g. 992, 1001"):
        create_model("preact-resnet-1000")
    with pytest.raises(ValueError, match=r"use 6n\+2, e.g. 20, 26"):
        create_model("resnet-21")


@pytest.mark.parametrize("kwargs, message", [
    ({"block": (5, 3)}, "kernel size 5"),
    ({"block": ()}, "block is empty"),
    ({"dropout": 1.0}, r"dropout=1.0 is outside \[0, 1\)"),
    ({"dropout": -0.1}, r"outside \[0, 1\)"),
    ({"block": (3,), "dropout": 0.3}, "needs two or more convs"),
    ({"stochastic_depth": 1.5}, "stochastic_depth"),
    ({"groups": 3}, "groups=3 does not divide"),
    ({"num_classes": 0}, "num_classes=0 must be a positive integer"),
    ({"blocks_per_group": 0}, "blocks_per_group=0"),
    ({"dropuot": 0.3}, "did you mean dropout"),
])
def test_bad_wrn_arguments_raise_value_error_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("wrn-10-1", **kwargs)
    with pytest.raises(ValueError, match="width=0"):
        create_model("wrn-10-0")


def blocks(model):
    return [m for m in model.modules() if isinstance(m, PreActBlock)]


@pytest.mark.parametrize("block", [(3, 3), (3, 1, 3), (1, 3, 1), (3, 3, 3, 3)])
def test_dropout_sits_only_between_the_convs_of_a_block(block):
    model = create_model("wrn-10-1", block=block, dropout=0.3)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 * (len(block) - 1)  # one before each conv after the first
    inside = set()
    for b in blocks(model):
        layers = list(b.branch)
        for i, m in enumerate(layers):
            if isinstance(m, nn.Dropout):
                inside.add(id(m))
                assert isinstance(layers[i - 1], nn.ReLU) and isinstance(layers[i + 1], nn.Conv2d)
                assert any(isinstance(p, nn.Conv2d) for p in layers[:i]), "dropout before the first conv"
        assert b.shortcut is None or not any(isinstance(m, nn.Dropout) for m in b.shortcut.modules())
    assert inside == {id(m) for m in dropouts}


def test_projection_shortcuts_only_where_the_shape_changes_and_take_the_preactivated_input():
    model = create_model("wrn-16-2").eval()
    shortcuts = [b.shortcut is not None for b in blocks(model)]
    assert shortcuts == [True, False, True, False, True, False]
    first = model.conv2[0]
    seen = {}
    first.shortcut.register_forward_pre_hook(lambda m, a: seen.__setitem__("shortcut", a[0].clone()))
    first.branch.register_forward_pre_hook(lambda m, a: seen.__setitem__("branch", a[0].clone()))
    x = torch.randn(2, 3, 16, 16)
    model(x)
    torch.testing.assert_close(seen["shortcut"], seen["branch"])
    assert (seen["shortcut"] >= 0).all()  # the ReLU output, not the raw input
    # k = 1: conv2 keeps 16 channels and resolution, so its first block is the identity shortcut
    assert create_model("wrn-10-1").conv2[0].shortcut is None


def test_no_conv_bias_he_init_and_unit_batchnorm():
    torch.manual_seed(0)
    model = create_model("wrn-16-4")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            if m.weight.numel() > 10_000:
                assert m.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


@pytest.mark.parametrize("block", [(1, 3, 1), (3, 1), (1, 3), (3, 1, 1), (3, 1, 3), (3,), (3, 3, 3)])
def test_every_block_type_keeps_the_spatial_plan(block):
    model = create_model("wrn-10-1", block=block).eval()
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 64, 8, 8)


def test_same_seed_gives_the_same_weights():
    torch.manual_seed(3)
    a = create_model("wrn-10-2").state_dict()
    torch.manual_seed(3)
    b = create_model("wrn-10-2").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stochastic_depth_decays_linearly_to_half():
    model = create_model("wrn-16-1", stochastic_depth=0.5)
    rates = [m.rate for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 6
    assert rates == pytest.approx([0.5 * (i + 1) / 6 for i in range(6)])  # survival 1 - l/L * 0.5
    assert {m.mode for m in model.modules() if isinstance(m, DropPath)} == {"batch"}  # Huang et al.'s
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model(x), model(x))
    res = create_model("resnet-20", stochastic_depth=0.5)
    assert max(m.rate for m in res.modules() if isinstance(m, DropPath)) == pytest.approx(0.5)


def branch_and_shortcut(block, x):
    """What a pre-activation block adds: (shortcut, branch) for input ``x``, computed by hand."""
    o = block.act(block.bn(x))
    skip = x if block.shortcut is None else block.shortcut(o)
    return skip, block.se(block.branch(o))


def frozen_bn_block(mode):
    """A block in train mode (drop-path on) with BN on its running stats, so outputs compare exactly."""
    torch.manual_seed(0)
    block = PreActBlock(8, 8, (3, 3), drop_path=0.5, drop_path_mode=mode).train()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return block


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_stochastic_depth_drops_the_whole_branch_per_mini_batch(mode):
    block = frozen_bn_block(mode)
    x = torch.randn(16, 8, 6, 6)
    with torch.no_grad():
        skip, branch = branch_and_shortcut(block, x)
        outcomes = []
        for _ in range(20):  # P(20 equal coins) = 2^-19
            y = block(x)
            dropped = [torch.equal(y[i], skip[i]) for i in range(len(x))]
            kept = [torch.equal(y[i], (skip + branch)[i]) for i in range(len(x))]
            outcomes.append("dropped" if all(dropped) else "kept" if all(kept) else "mixed")
    if mode == "batch":  # one coin per step for the whole batch, the kept branch unscaled
        assert set(outcomes) == {"dropped", "kept"}
    else:  # control: per-image coins mix within a batch
        assert "mixed" in outcomes


@pytest.mark.parametrize("mode, factor", [("batch", 0.5), ("sample", 1.0)])
def test_stochastic_depth_scales_the_branch_by_its_survival_at_test_time(mode, factor):
    block = PreActBlock(8, 16, (3, 3), stride=2, drop_path=0.5, drop_path_mode=mode).eval()
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        skip, branch = branch_and_shortcut(block, x)
        torch.testing.assert_close(block(x), skip + factor * branch)
    drop = DropPath(0.5, "sample").train()  # per image: kept branches scaled by 1 / survival
    y = drop(torch.ones(4000, 1))
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert y.mean().item() == pytest.approx(1.0, abs=0.1)


def test_drop_path_mode_is_checked():
    with pytest.raises(ValueError, match="drop_path_mode='row' is not one of batch, sample"):
        create_model("wrn-10-1", stochastic_depth=0.5, drop_path_mode="row")


def test_squeeze_excitation_and_grouped_convs_are_block_options():
    model = create_model("wrn-10-2", se=True, groups=4)
    b = model.conv3[0]
    assert isinstance(b.se, SqueezeExcite) and b.se.fc1.out_channels == max(1, 64 // 16)
    convs = [m for m in b.branch if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 4]
    bottleneck = create_model("preact-resnet-11", bottleneck=True, groups=2)
    convs = [m for m in bottleneck.conv2[0].branch if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size[0], c.groups) for c in convs] == [(1, 1), (3, 2), (1, 1)]
    assert params("wrn-10-2", se=True) > params("wrn-10-2") > params("wrn-10-2", groups=4)


def test_original_resnet_shortcut_a_is_parameter_free_and_b_projects():
    a = create_model("resnet-20")
    assert sum(isinstance(m, ZeroPadShortcut) for m in a.modules()) == 2
    b = create_model("resnet-20", shortcut="B")
    assert sum(p.numel() for p in b.parameters()) > sum(p.numel() for p in a.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert a.eval()(x).shape == b.eval()(x).shape == (2, 10)
    with pytest.raises(ValueError, match="use 'A'"):
        create_model("resnet-20", shortcut="C")


def test_preact_resnet_uses_bottlenecks_from_164_and_basic_blocks_below():
    with torch.device("meta"):
        assert create_model("preact-resnet-164").block == (1, 3, 1)
        assert create_model("preact-resnet-110").block == (3, 3)
    assert "bottleneck=True" in pytest.raises(ValueError, create_model, "preact-resnet-11").value.args[0]


def test_model_args_rebuild_the_model_after_a_json_round_trip():
    model = create_model("wrn-10-2", block=(3, 1, 3), dropout=0.3, num_classes=7)
    args = json.loads(json.dumps(model.model_args))
    assert args["block"] == [3, 1, 3]
    again = create_model(**args)
    assert again.block == (3, 1, 3)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_channels_last_input_gives_the_same_output():
    model = create_model("wrn-10-1").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x),
                               rtol=1e-4, atol=1e-5)
