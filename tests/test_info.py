"""`wrn info`: the architecture in the paper's terms, params and FLOPs; JSON; the model list; errors."""

import json

import pytest
import torch

from wrn import create_model
from wrn.cli import main
from wrn.models.flops import forward_flops


def info(capsys, *argv):
    rc = main(["info", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_info_wrn_28_10_shows_groups_widths_params_and_flops(capsys):
    rc, out, _ = info(capsys, "wrn-28-10")
    assert rc == 0
    assert "block B(3,3)" in out and "blocks per group N = 4" in out and "width k = 10" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert lines["conv1"][1:3] == ["32x32", "16"]
    assert lines["conv2"][1:3] == ["32x32", "160"]
    assert lines["conv3"][1:3] == ["16x16", "320"]
    assert lines["conv4"][1:3] == ["8x8", "640"]
    assert "conv layers: 28" in out
    assert "36,479,194" in out
    assert "forward FLOPs at 32x32: 10.487 G" in out


def test_info_block_override_and_json(capsys):
    rc, out, _ = info(capsys, "wrn-40-2", "--block", "3,1,3", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["block"] == "B(3,1,3)" and data["deepening_l"] == 3 and data["blocks_per_group"] == 6
    assert [g["width"] for g in data["groups"]] == [16, 32, 64, 128, 10]
    assert [g["output"] for g in data["groups"][1:4]] == [[32, 32], [16, 16], [8, 8]]
    with torch.device("meta"):
        model = create_model("wrn-40-2", block=(3, 1, 3))
    assert data["params"] == sum(p.numel() for p in model.parameters())
    assert data["model_args"] == {"block": [3, 1, 3]}


def test_info_deepening_net_counts_40_conv_layers(capsys):
    rc, out, _ = info(capsys, "wrn-40-2", "--block", "3,3,3", "--blocks-per-group", "4", "--dropout", "0.3",
                      "--num-classes", "100", "--json")
    data = json.loads(out)
    assert rc == 0 and data["conv_layers"] == 40 and data["params"] == pytest.approx(2.26e6, abs=0.02e6)
    assert data["dropout"] == 0.3 and data["num_classes"] == 100


def test_info_input_size_changes_output_sizes_and_flops(capsys):
    _, out, _ = info(capsys, "wide_resnet50_2", "--json")
    data = json.loads(out)
    assert data["input_size"] == 224 and data["params"] == 68_883_240
    assert data["forward_gflops"] == pytest.approx(22.8, abs=0.05)  # 11.4 GMACs, as usually quoted
    assert data["groups"][-2]["output"] == [7, 7]
    _, out, _ = info(capsys, "wrn-16-4", "--input", "64", "--json")
    assert json.loads(out)["groups"][3]["output"] == [16, 16]


def test_forward_flops_counts_two_flops_per_multiply_add():
    model = create_model("wrn-10-1")
    # stem conv alone: 32*32 positions x 16 outputs x 27 inputs; FLOPs scale with the image area
    assert forward_flops(model, 64) == pytest.approx(4 * forward_flops(model, 32), rel=0.01)
    assert forward_flops(torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), 32) == 2 * 32 * 32 * 16 * 27
    assert forward_flops(create_model("resnet50"), 224) == pytest.approx(8.18e9, rel=0.01)


def test_info_list_shows_registered_models(capsys):
    rc, out, _ = info(capsys, "--list")
    assert rc == 0
    names = out.split()
    assert {"wrn-28-10", "resnet-110", "preact-resnet-164", "wide_resnet50_2"} <= set(names)


@pytest.mark.parametrize("argv, message", [
    (["wrn-28-1O"], "unknown model 'wrn-28-1O': did you mean"),
    (["wrn-27-10"], "depth 27 does not fit block (3, 3): use 6N+4, e.g. 22, 28"),
    (["wrn-28-10", "--block", "3,x"], "--block '3,x' is not a list of kernel sizes"),
    (["resnet50", "--block", "3,3"], "resnet50 has no argument 'block'"),
    ([], "no MODEL given"),
    (["wrn-16-4", "--input", "0"], "--input 0 must be a positive image size"),
])
def test_bad_input_prints_one_line_and_exits_2(capsys, argv, message):
    rc, out, err = info(capsys, *argv)
    assert rc == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_name_names_close_matches(capsys):
    _, _, err = info(capsys, "wrn-28-1O")
    assert "wrn-28-10" in err
