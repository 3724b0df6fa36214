"""Untrusted files: nothing the project loads can run code (no unsafe unpickling anywhere), and
damaged or mismatched safetensors files are one-line errors that name the file or the tensor."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import wrn
from wrn.cli import main
from wrn.errors import UserError
from wrn.models import create_model, load_external_weights
from wrn.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs code: it writes ``marker``. A loader that unpickles it is unsafe."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload as a torch.save zip (.pth), a raw pickle (.pt) and a .bin, each shaped like
    a state dict so that a careless loader would take it."""
    folder.mkdir(parents=True, exist_ok=True)
    obj = {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": Payload(marker)}
    files = {"zip": folder / "evil.pth", "raw": folder / "evil.pt", "bin": folder / "pytorch_model.bin"}
    torch.save(obj, files["zip"])
    files["raw"].write_bytes(pickle.dumps(obj, protocol=2))
    files["bin"].write_bytes(files["zip"].read_bytes())
    return files


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "marker"
    files = evil_files(tmp_path / "evil", marker)
    yield files, marker
    assert not marker.exists(), "a crafted pickle ran code"


def test_the_payload_is_real(tmp_path):
    # Sanity: unpickled without restrictions, these files do run code.
    marker = tmp_path / "marker"
    files = evil_files(tmp_path / "evil", marker)
    torch.load(files["zip"], weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(files["raw"].read_bytes())
    assert marker.exists()


def test_load_external_weights_refuses_pickled_code(evil):
    files, marker = evil
    for path in files.values():
        with pytest.raises(UserError, match=re.escape(str(path)) + " is not a plain weights file"):
            load_external_weights(create_model("wrn-10-1", num_classes=2), path)


def test_torch_hub_weights_refuse_pickled_code(evil):
    files, marker = evil
    spec = importlib.util.spec_from_file_location("wrn_hubconf", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    with pytest.raises(UserError, match="is not a plain weights file"):
        hub.create_model("wrn-10-1", weights=str(files["zip"]), num_classes=2)


def test_load_checkpoint_never_unpickles(evil):
    files, marker = evil
    folder = files["zip"].parent  # a folder holding only .pth/.pt/.bin files
    with pytest.raises(UserError, match="no complete checkpoint in .*the run wrote none yet"):
        wrn.load_checkpoint(folder)
    for path in files.values():
        with pytest.raises(UserError, match="is a file: give a run directory .*never loads pickled"):
            wrn.load_checkpoint(path)


def tiny_checkpoint(run: Path) -> Path:
    """A real (untrained) checkpoint as wrn train writes it."""
    model = create_model("wrn-10-1", num_classes=3)
    return checkpoint.save_checkpoint(run, model=model, optimizer=None, state={"step": 0, "model_args": model.model_args})


def replace_file(ckpt: Path, name: str, data: bytes) -> None:
    """Swap a file of a checkpoint and fix its recorded size and checksum, as an attacker would:
    what the loader reads must be safe even when state.json vouches for it."""
    (ckpt / name).write_bytes(data)
    state = json.loads((ckpt / "state.json").read_text())
    state["files"][name] = len(data)
    state["sha256"][name] = hashlib.sha256(data).hexdigest()
    (ckpt / "state.json").write_text(json.dumps(state))


def test_pickle_in_place_of_model_safetensors_is_refused(evil, tmp_path):
    files, marker = evil
    ckpt = tiny_checkpoint(tmp_path / "run")
    replace_file(ckpt, "model.safetensors", files["zip"].read_bytes())
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file .*damaged"):
        wrn.load_checkpoint(tmp_path / "run")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wrn: error:"), err
    return err[0]


def test_cli_eval_and_export_refuse_pickled_code(evil, tmp_path, capsys):
    files, marker = evil
    ckpt = tiny_checkpoint(tmp_path / "run")
    replace_file(ckpt, "model.safetensors", files["raw"].read_bytes())
    cases = {str(files["zip"]): "is a file: give a run directory", str(files["zip"].parent): "no complete checkpoint",
             str(tmp_path / "run"): "model.safetensors is not a readable safetensors file"}
    for target, words in cases.items():
        assert main(["eval", target, "--data", str(tmp_path)]) == 2
        assert words in one_error_line(capsys)
        onnx = tmp_path / "out.onnx"
        assert main(["export", target, "--onnx", str(onnx)]) == 2
        assert words in one_error_line(capsys)
        assert not onnx.exists()


def test_cifar_batches_are_unpickled_with_an_allow_list(tmp_path):
    # Dataset archives are untrusted too: the CIFAR reader allows only numpy's reconstruction.
    from wrn.data.formats import CIFAR10_FILES, read_source

    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR10_FILES:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="damaged or truncated file .*unexpected object .*exec in a CIFAR batch"):
        read_source(folder)
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in (ROOT / "src" / "wrn").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls.append((path.name, m.group(1)))
        assert not re.search(r"\bpickle\.loads?\(", text), f"{path}: plain pickle.load"
    assert calls, "expected the .pth reader"
    for name, args in calls:
        assert "weights_only=True" in args, f"{name}: torch.load({args})"


# -- safetensors validation -----------------------------------------------------------------------

def rewrite_tensor(ckpt: Path, key: str, fn) -> None:
    tensors = st_load((ckpt / "model.safetensors").read_bytes())
    tensors[key] = fn(tensors[key])
    replace_file(ckpt, "model.safetensors", st_save(tensors))


@pytest.mark.parametrize("change,words", [
    (lambda t: t[:, :2].contiguous(), "is torch.float32 [3, 2] in the checkpoint but torch.float32 [3, 64] in the model"),
    (lambda t: t.double(), "is torch.float64 [3, 64] in the checkpoint but torch.float32 [3, 64] in the model"),
])
def test_tensor_shape_or_dtype_mismatch_names_the_tensor(tmp_path, capsys, change, words):
    ckpt = tiny_checkpoint(tmp_path / "run")
    rewrite_tensor(ckpt, "fc.weight", change)
    with pytest.raises(UserError, match=re.escape(f"tensor 'fc.weight' {words}")):
        wrn.load_checkpoint(ckpt)
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = one_error_line(capsys)
    assert "'fc.weight'" in err and "belongs to a different model" in err


def test_missing_or_extra_tensor_is_named(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    tensors = st_load((ckpt / "model.safetensors").read_bytes())
    tensors["head.extra"] = torch.zeros(1)
    replace_file(ckpt, "model.safetensors", st_save(tensors))
    with pytest.raises(UserError, match="tensor 'head.extra' is not in the model"):
        wrn.load_checkpoint(ckpt)
    del tensors["head.extra"], tensors["fc.bias"]
    replace_file(ckpt, "model.safetensors", st_save(tensors))
    with pytest.raises(UserError, match="tensor 'fc.bias' is missing from the checkpoint"):
        wrn.load_checkpoint(ckpt)


def header(obj: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(obj).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GARBAGE = {
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
    "huge header length": struct.pack("<Q", 1 << 60) + b"{}",
    "header not JSON": struct.pack("<Q", 8) + b"not json",
    "offsets past the end": header({"fc.weight": {"dtype": "F32", "shape": [3, 64], "data_offsets": [0, 768]}}, b"\0" * 16),
    "shape and size disagree": header({"fc.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}}, b"\0" * 16),
    "unknown dtype": header({"fc.weight": {"dtype": "X99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "empty file": b"",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_safetensors_is_a_one_line_error(tmp_path, capsys, name):
    ckpt = tiny_checkpoint(tmp_path / "run")
    replace_file(ckpt, "model.safetensors", GARBAGE[name])
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        wrn.load_checkpoint(ckpt)
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "is not a readable safetensors file" in one_error_line(capsys)
    (tmp_path / "w.safetensors").write_bytes(GARBAGE[name])
    with pytest.raises(UserError, match="w.safetensors is not a readable safetensors file"):
        load_external_weights(create_model("wrn-10-1", num_classes=3), tmp_path / "w.safetensors")


def test_truncated_safetensors_is_a_one_line_error(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "run")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])  # size no longer matches state.json
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = one_error_line(capsys)
    assert "no complete checkpoint" in err and "model.safetensors is truncated or altered" in err
    replace_file(ckpt, "model.safetensors", data[: len(data) // 2])  # ... and when the size is "right"
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        wrn.load_checkpoint(ckpt)


def test_state_json_that_builds_no_model_is_a_one_line_error(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "run")
    state = json.loads((ckpt / "state.json").read_text())
    for args in ({"name": "wrn-10-1", "num_classes": 3, "evil": 1}, {"name": "no-such-net"}):
        state["model_args"] = args
        (ckpt / "state.json").write_text(json.dumps(state))
        assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 2
        err = one_error_line(capsys)
        assert "state.json: its model_args" in err and "do not build a model" in err
