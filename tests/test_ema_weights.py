"""A run trained with train.ema: evaluation, the summary, `wrn eval`, `wrn predict`, export and
``wrn.load_checkpoint`` take the moving average by default and the trained weights with
``--weights raw`` / ``weights="raw"``; the two differ (the control that the option does something)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import wrn
from wrn.cli import main
from wrn.errors import UserError

from helpers import write_image_folder  # tests/helpers.py

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(data: Path, out: Path, *extra: str) -> Path:
    assert main(["train", "--data", str(data), "--out", str(out), "--quiet", "model.name=wrn-10-1", "model.dropout=0",
                 "train.epochs=2", "train.batch_size=32", "train.eval_batch_size=64", "accel.device=cpu",
                 f"data.cache_dir={out.parent / 'cache'}", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("ema")
    data = write_image_folder(root / "data", 160, 48, 16)
    return _train(data, root / "ema", "train.ema=0.9"), _train(data, root / "plain"), data


def _eval(run: Path, capsys, *extra: str) -> dict:
    assert main(["eval", str(run), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_and_eval_report_the_average_and_the_raw_weights(runs, capsys):
    run, _, _ = runs
    summary = json.loads((run / "summary.json").read_text())
    averaged, raw = _eval(run, capsys), _eval(run, capsys, "--weights", "raw")
    assert summary["weights"] == averaged["weights"] == "ema" and raw["weights"] == "raw"
    assert (summary["test_acc"], summary["test_loss"]) == (averaged["accuracy"], pytest.approx(averaged["loss"]))
    assert (summary["test_acc_raw"], summary["test_loss_raw"]) == (raw["accuracy"], pytest.approx(raw["loss"]))
    assert averaged["loss"] != pytest.approx(raw["loss"], rel=1e-3)  # control: two different networks
    assert _eval(run, capsys, "--weights", "ema") == averaged


def test_load_checkpoint_takes_the_average_unless_told_otherwise(runs):
    run, _, _ = runs
    files = {name: load_file(run / "checkpoint" / f"{name}.safetensors") for name in ("ema", "model")}
    for weights, file in ((None, "ema"), ("ema", "ema"), ("raw", "model")):
        model, state = wrn.load_checkpoint(run, weights=weights)
        assert state["weights"] == ("raw" if file == "model" else "ema")
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, files[file][name]), (weights, name)
    assert any(not torch.equal(files["ema"][k], files["model"][k]) for k in files["model"])  # control


def test_predict_uses_the_average_by_default(runs, tmp_path, capsys):
    run, _, data = runs
    images = sorted((data / "test").rglob("*.png"))[:12]
    default, averaged, raw = (wrn.predict(run, images, weights=w).probs for w in (None, "ema", "raw"))
    np.testing.assert_array_equal(default, averaged)
    assert np.abs(default - raw).max() > 1e-4  # control
    out = tmp_path / "raw.json"
    assert main(["predict", str(run), *map(str, images), "--weights", "raw", "--out", str(out)]) == 0
    top = [p["top"][0]["prob"] for p in json.loads(out.read_text())["predictions"]]
    np.testing.assert_allclose(top, raw.max(1), rtol=1e-6)


def test_a_run_without_an_average_uses_its_weights_and_refuses_ema(runs, capsys):
    _, plain, _ = runs
    summary = json.loads((plain / "summary.json").read_text())
    assert summary["weights"] == "raw" and summary["test_acc_raw"] == summary["test_acc"]
    assert summary["ema_sha256"] is None and not (plain / "checkpoint" / "ema.safetensors").exists()
    assert _eval(plain, capsys)["weights"] == "raw"
    with pytest.raises(UserError, match=r"kept no moving average .*train.ema=0.*--weights raw"):
        wrn.load_checkpoint(plain, weights="ema")
    with pytest.raises(UserError, match="weights='best': use ema .* or raw"):
        wrn.load_checkpoint(plain, weights="best")
    model, _ = wrn.load_checkpoint(plain)
    with pytest.raises(UserError, match="pass the run directory"):
        wrn.predict((model, {}), [], weights="raw")


def test_export_takes_the_average(runs, tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is the optional extra: pip install 'wrn[onnx]'")
    run, _, _ = runs
    assert main(["export", str(run), "--onnx", str(tmp_path / "ema.onnx"), "--no-verify"]) == 0
    assert "moving average" in capsys.readouterr().out
    assert main(["export", str(run), "--onnx", str(tmp_path / "raw.onnx"), "--no-verify", "--weights", "raw"]) == 0
    assert "moving average" not in capsys.readouterr().out
    assert (tmp_path / "ema.onnx").read_bytes() != (tmp_path / "raw.onnx").read_bytes()


def test_timing_an_evaluation_leaves_the_average_alone(runs, tmp_path):
    """A budget times one evaluation batch of the evaluated network (the average): that must not
    move the average's BN statistics. Control: the same batch through the average in training
    mode would have."""
    import time

    from wrn.train import pace
    from wrn.train.config import load_config
    from wrn.train.run import build_run

    _, _, data = runs
    cfg = load_config(overrides=["model.name=wrn-10-1", "model.dropout=0", "train.epochs=1", "train.batch_size=32",
                                 "train.eval_batch_size=16", "accel.device=cpu", "train.ema=0.9", f"data.path={data}",
                                 f"data.cache_dir={tmp_path / 'cache'}"])
    run, _ = build_run(cfg, tmp_path / "run", False, True, time.perf_counter())
    average = run.ema.module
    before = {k: v.clone() for k, v in average.state_dict().items()}
    assert pace._eval_image_s(run) > 0 and not average.training
    assert all(torch.equal(v, before[k]) for k, v in average.state_dict().items())
    average.train()  # control
    images, _ = next(iter(run.loaders["test"].epoch(0)))
    with torch.no_grad():
        average(run.augment.normalize(images))
    assert not torch.equal(average.state_dict()["bn.running_mean"], before["bn.running_mean"])


def test_init_takes_the_average_unless_told_to_take_the_raw_weights(runs, tmp_path, capsys):
    """`wrn train --init RUN` starts from RUN's moving average (the weights eval and predict use);
    train.init_weights=raw from its trained weights (control: the two starts differ, each equal to
    its file); on a run without an average, ema is one line naming the fix."""
    run, plain, data = runs
    checkpoint = run / "checkpoint"
    sha = json.loads((checkpoint / "state.json").read_text())["sha256"]
    started = {}
    for choice in (None, "ema", "raw"):
        out = tmp_path / f"from-{choice}"
        extra = [f"train.init_weights={choice}"] if choice else []
        assert main(["train", "--init", str(run), "--data", str(data), "--out", str(out), "--quiet", "train.epochs=1",
                     "train.batch_size=32", "train.eval_batch_size=64", "accel.device=cpu",
                     f"data.cache_dir={tmp_path / 'cache'}", *extra]) == 0
        config = (out / "config.yaml").read_text()
        started[choice] = next(line.split(": ")[1] for line in config.splitlines() if "init_sha256" in line)
    assert started[None] == started["ema"] == sha["ema.safetensors"]
    assert started["raw"] == sha["model.safetensors"] != started["ema"]
    assert main(["train", "--init", str(plain), "--data", str(data), "--out", str(tmp_path / "bad"), "--quiet",
                 "accel.device=cpu", "train.init_weights=ema"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "kept no moving average" in err and "train.init_weights=raw" in err
    assert not (tmp_path / "bad").exists()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "bad"), "accel.device=cpu",
                 "train.init_weights=raw"]) == 2
    assert "train.init_weights: is set without train.init" in capsys.readouterr().err
