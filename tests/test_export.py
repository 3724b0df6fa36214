"""ONNX export: onnxruntime gives PyTorch's outputs (any batch size), files are written atomically,
and `wrn export` works end to end; torch.hub loads the registry's constructors from a checkout."""

import os
from pathlib import Path

import pytest
import torch

import wrn
from wrn import create_model
from wrn.cli import main
from wrn.errors import UserError
from wrn.export import export_onnx, verify_onnx

onnx = pytest.importorskip("onnx", reason="onnx is the optional extra: pip install 'wrn[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the optional extra: pip install 'wrn[onnx]'")

REPO = Path(__file__).resolve().parents[1]


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def test_small_wrn_exports_with_a_dynamic_batch_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = create_model("wrn-10-2", block=(3, 1, 3), dropout=0.3, se=True, num_classes=7)
    model.train()
    path = export_onnx(model, tmp_path / "wrn.onnx", 32)
    assert model.training, "export must leave the model's mode as it was"
    graph = onnx.load(path).graph
    onnx.checker.check_model(onnx.load(path))
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    model.eval()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(path, x), model(x), rtol=1e-4, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["wrn.onnx"]  # no temp files left behind


def test_wide_resnet50_2_onnx_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = create_model("wide_resnet50_2")
    path = export_onnx(model, tmp_path / "wrn50_2.onnx", 64)
    assert verify_onnx(model, path, 64, batch=2) < 1e-3


def test_failed_export_leaves_the_old_file_and_no_temp_files(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(UserError, match="opset 999 is not supported"):
        export_onnx(create_model("wrn-10-1"), target, 32, opset=999)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_wrn_export_command_writes_and_verifies(tmp_path, monkeypatch, capsys):
    model = create_model("wrn-10-1", num_classes=4)
    seen = []

    def load_checkpoint(path, weights=None):  # the checkpoint contract: path -> (model, state)
        seen.append((path, weights))
        return model, {"step": 0, "weights": "raw"}

    monkeypatch.setattr(wrn, "load_checkpoint", load_checkpoint, raising=False)
    out = tmp_path / "exported.onnx"
    assert main(["export", str(tmp_path / "run"), "--onnx", str(out), "--input", "24"]) == 0
    printed = capsys.readouterr().out
    assert seen == [(str(tmp_path / "run"), None)] and out.is_file()
    assert "input images [batch, 3, 24, 24] -> logits [batch, 4]" in printed
    assert "max abs difference" in printed
    assert main(["export", "run", "--onnx", str(tmp_path / "no" / "such" / "dir.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_wrn_export_round_trip_through_a_saved_checkpoint(tmp_path, capsys):
    checkpoint = pytest.importorskip("wrn.train.checkpoint", reason="the trainer's checkpoint module")
    model = create_model("wrn-10-1", block=[3, 1, 3], num_classes=3)
    checkpoint.save_checkpoint(tmp_path, model=model, optimizer=None, state={"model_args": model.model_args})
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path), "--onnx", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(out, x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_torch_hub_loads_constructors_from_a_checkout():
    model = torch.hub.load(str(REPO), "wrn_28_10", source="local")
    assert sum(p.numel() for p in model.parameters()) == 36_479_194
    assert model.model_args == {"name": "wrn-28-10"}
    small = torch.hub.load(str(REPO), "create_model", "wrn-22-2", source="local", block=(3, 1, 3), num_classes=3)
    assert small.block == (3, 1, 3) and small.num_classes == 3
    entry = torch.hub.load(str(REPO), "preact_resnet_164", source="local", num_classes=100)
    assert entry.num_classes == 100 and entry.block == (1, 3, 1)
