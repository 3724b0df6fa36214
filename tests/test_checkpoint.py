"""Checkpoints: safetensors + JSON (no pickle), atomic swap, fallback to the last complete one,
rebuild from model_args, clear errors for damaged (truncated or bit-flipped) or mismatched files."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest
import torch

import wrn
from wrn.errors import UserError
from wrn.train import checkpoint as ck


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = wrn.create_model("wrn-10-1", num_classes=3, dropout=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _save(run, model, opt, step=2):
    return ck.save_checkpoint(run, model=model, optimizer=opt, state={"step": step, "model_args": model.model_args})


def test_round_trip_rebuilds_model_and_optimizer(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path, model, opt)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.json",
                                                      "optimizer.safetensors", "state.json"]
    loaded, state = wrn.load_checkpoint(tmp_path)  # a run dir or its checkpoint/ dir
    assert state["step"] == 2 and not loaded.training
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))

    model2, opt2 = _trained(seed=1)
    ck.restore(path, model2, opt2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        assert torch.equal(s1["state"][i]["momentum_buffer"], s2["state"][i]["momentum_buffer"])


def test_rng_state_round_trip(tmp_path):
    model, opt = _trained()
    torch.manual_seed(7)
    path = _save(tmp_path, model, opt)
    expected = torch.rand(5)
    torch.manual_seed(99)
    ck.restore(path, model, opt)
    assert torch.equal(torch.rand(5), expected)


def test_new_checkpoint_replaces_old_and_leaves_no_temp(tmp_path):
    model, opt = _trained()
    _save(tmp_path, model, opt, step=1)
    _save(tmp_path, model, opt, step=2)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_kill_between_the_renames_falls_back_to_previous(tmp_path, capsys):
    model, opt = _trained()
    _save(tmp_path, model, opt, step=1)
    # State after a kill mid-swap: the old checkpoint moved aside, the new one not yet in place.
    (tmp_path / "checkpoint").rename(tmp_path / ck.OLD)
    (tmp_path / ".checkpoint.tmp-123").mkdir()
    assert ck.find_checkpoint(tmp_path) == tmp_path / ck.OLD
    assert "warning" in capsys.readouterr().err
    _save(tmp_path, model, opt, step=2)  # the next save completes the swap
    assert ck.find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert not (tmp_path / ck.OLD).exists()


def test_truncated_file_is_detected(tmp_path, capsys):
    model, opt = _trained()
    path = _save(tmp_path, model, opt, step=1)
    shutil.copytree(path, tmp_path / ck.OLD)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert ck.find_checkpoint(tmp_path) == tmp_path / ck.OLD  # the complete one, with a warning
    assert "checkpoint/model.safetensors is truncated" in capsys.readouterr().err
    shutil.rmtree(tmp_path / ck.OLD)
    with pytest.raises(UserError, match="no complete checkpoint"):
        ck.find_checkpoint(tmp_path)


def test_pickle_is_never_loaded(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path, model, opt)
    evil = pickle.dumps({"weight": torch.zeros(1)})
    (path / "model.safetensors").write_bytes(evil)
    state = json.loads((path / "state.json").read_text())  # size and checksum fixed, as an attacker would
    state["files"]["model.safetensors"] = len(evil)
    state["sha256"]["model.safetensors"] = hashlib.sha256(evil).hexdigest()
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        wrn.load_checkpoint(path)


def test_mismatched_model_names_the_tensor(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path, model, opt)
    other = wrn.create_model("wrn-10-1", num_classes=5, dropout=0.1)
    with pytest.raises(UserError, match=r"tensor '.+' is torch.float32 \[3, \d+\] in the checkpoint but "
                                        r"torch.float32 \[5, \d+\] in the model"):
        ck.load_weights(other, path)
    with pytest.raises(UserError, match="is missing from the checkpoint"):
        ck.load_weights(wrn.create_model("wrn-16-1", num_classes=3, dropout=0.1), path)


def test_keep_copy(tmp_path):
    model, opt = _trained()
    _save(tmp_path, model, opt)
    kept = ck.keep_copy(tmp_path, 10)
    assert kept.name == "epoch-0010" and ck.read_state(kept)["step"] == 2
    assert wrn.load_checkpoint(kept)[1]["step"] == 2


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        wrn.load_checkpoint(tmp_path / "nope")


# -- checksums: a same-size bit flip ---------------------------------------------------------------

def flip_byte(path) -> None:
    """Flip one bit of the byte in the middle of ``path`` (inside the tensor data), keeping its size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in tensors.items()}


def _two_checkpoints(run):
    """RUN/checkpoint at step 2 and a complete RUN/.checkpoint.old at step 1 (as after a kill mid-swap)."""
    model, opt = _trained(seed=1)
    _save(run, model, opt, step=1)
    shutil.copytree(run / "checkpoint", run.parent / "step1")
    model, opt = _trained(seed=0)
    path = _save(run, model, opt, step=2)
    shutil.copytree(run.parent / "step1", run / ck.OLD)
    return path, model, opt


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_same_size_bit_flip_is_caught_and_falls_back(tmp_path, capsys, name):
    run = tmp_path / "run"
    path, model, opt = _two_checkpoints(run)
    flip_byte(path / name)

    # Control: the sizes still match, so the checks before checksums took the checkpoint, and the
    # flipped tensor loads silently with another value.
    assert ck.read_state(path, verify=False) is not None
    if name == "model.safetensors":
        fresh = wrn.create_model("wrn-10-1", num_classes=3, dropout=0.1)
        ck.load_weights(fresh, path)
        saved, loaded = _tensor_bytes(model.state_dict()), _tensor_bytes(fresh.state_dict())
    else:
        fresh = torch.optim.SGD(_trained(seed=2)[0].parameters(), lr=0.1, momentum=0.9)
        ck.load_optimizer(fresh, path)
        saved, loaded = ({str(i): s["momentum_buffer"].numpy().tobytes() for i, s in o.state_dict()["state"].items()}
                         for o in (opt, fresh))
    assert saved.keys() == loaded.keys() and saved != loaded

    # With checksums: the previous complete checkpoint, with a warning naming the file.
    assert ck.read_state(path) is None
    assert ck.find_checkpoint(run) == run / ck.OLD
    err = capsys.readouterr().err
    assert err.startswith("wrn: warning:") and f"checkpoint/{name} is damaged" in err and ".checkpoint.old" in err
    assert wrn.load_checkpoint(run)[1]["step"] == 1
    capsys.readouterr()

    # Loading or resuming from that one checkpoint directly: one line naming the damaged file.
    shutil.rmtree(run / ck.OLD)
    with pytest.raises(UserError, match=f"no complete checkpoint .*checkpoint/{name} is damaged"):
        wrn.load_checkpoint(path)
    with pytest.raises(UserError, match=f"cannot resume from .*checkpoint/{name} is damaged"):
        ck.restore(path, *_trained(seed=3))


def test_checkpoint_without_checksums_still_loads_with_size_checks(tmp_path, capsys):
    # A checkpoint of format 1 (before checksums) has no "sha256" in state.json.
    model, opt = _trained()
    path = _save(tmp_path, model, opt)
    state = json.loads((path / "state.json").read_text())
    assert state["format"] == 2 and set(state["sha256"]) == set(state["files"])
    del state["sha256"]
    state["format"] = 1
    (path / "state.json").write_text(json.dumps(state))

    loaded, got = wrn.load_checkpoint(tmp_path)
    assert got["step"] == 2 and "sha256" not in got
    ck.restore(path, *_trained(seed=1))
    assert capsys.readouterr().err == ""
    flip_byte(path / "model.safetensors")  # not detectable without a checksum: the limit of format 1
    assert ck.find_checkpoint(tmp_path) == path
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-1])  # sizes are still checked
    with pytest.raises(UserError, match="model.safetensors is truncated"):
        wrn.load_checkpoint(path)
