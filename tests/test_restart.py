"""The same command resumes (issue 35.1): `wrn train --out DIR ...` run again, as a cluster's restart
or requeue does, continues the run in DIR from its last checkpoint, starts it over when it has
none yet, says a finished run is finished, and refuses another run in DIR naming the first
differing key. In-process `wrn train` on a WRN-10-1 and 8x8 images (one thread); a run is stopped
by a real SIGTERM at a chosen step (tests/stopping.py). Under torchrun: tests/test_restarts_dist.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wrn.cli import main
from wrn.train import checkpoint
from wrn.train.config import load_config
from wrn.train.restart import first_difference, plan

from helpers import write_image_folder  # tests/helpers.py
from stopping import differing, records, resumed_from, stop_at  # tests/stopping.py

pytestmark = pytest.mark.usefixtures("one_thread")

STOP = 17  # mid-epoch 2 of 3 (12 steps each), between two checkpoint_every marks
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", "train.epochs=3", "train.batch_size=8",
        "train.checkpoint_every=5", "data.val_size=0", "optim.schedule=onecycle", "optim.warmup_epochs=1",
        "optim.lr=0.05", "accel.precision=fp32", "accel.channels_last=false", "accel.compile=false",
        "log.every_steps=4", "train.eval_batch_size=32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("restart")
    data = write_image_folder(root / "data", 96, 32, 8, classes=3)
    command = ["train", "--quiet", "--data", str(data), *ARGS, f"data.cache_dir={root / 'cache'}"]
    assert main([*command, "--out", str(root / "reference")]) == 0
    return root, command


def stopped(setup, name: str, monkeypatch) -> Path:
    """The same command, stopped by a SIGTERM after step STOP (exit 75, a checkpoint at STOP)."""
    root, command = setup
    with monkeypatch.context() as m:
        stop_at(m, STOP)
        assert main([*command, "--out", str(root / name)]) == 75
    return root / name


def test_the_same_command_continues_a_stopped_run_bit_identical(setup, monkeypatch):
    root, command = setup
    run = stopped(setup, "again", monkeypatch)
    assert main([*command, "--out", str(run)]) == 0
    resume = records(run, "resume")
    assert len(resume) == 1 and resume[0]["auto"] is True
    # A silent start-over would end with the same weights too (training is a function of the
    # config): the resume record at the checkpoint's step is what tells the two apart.
    assert resumed_from(run) == STOP > 0
    assert differing(run, root / "reference") == []
    assert [r["epoch"] for r in records(run, "epoch")] == [0, 1, 2]


def test_run_neutral_keys_may_differ_and_take_the_commands_value(setup, monkeypatch):
    root, command = setup
    run = stopped(setup, "neutral", monkeypatch)
    assert main([*command, "--out", str(run), "log.every_steps=2", "train.checkpoint_every=3"]) == 0
    assert resumed_from(run) == STOP and differing(run, root / "reference") == []
    steps = [r["step"] for r in records(run, "step") if r["step"] > STOP]
    assert steps and all(s % 2 == 0 for s in steps)  # the command's log.every_steps, not the run's 4


def test_the_same_run_without_a_checkpoint_starts_over(setup):
    """Killed after writing config.yaml, before its first checkpoint: the same command starts the
    run over in DIR (no resume record) and ends like the reference."""
    root, command = setup
    run = root / "no-checkpoint"
    run.mkdir()
    shutil.copy(root / "reference" / "config.yaml", run / "config.yaml")
    (run / "log.jsonl").write_text('{"kind": "start", "step": 0}\n{"kind": "step", "st')  # cut by the kill
    (run / ".checkpoint.tmp-123").mkdir()  # a first checkpoint half written
    assert main([*command, "--out", str(run)]) == 0
    assert resumed_from(run) is None and len(records(run, "start")) == 1
    assert differing(run, root / "reference") == []


def test_a_finished_run_says_so_and_exits_0(setup, capsys):
    root, command = setup
    ref = root / "reference"
    before = (ref / "checkpoint" / "model.safetensors").read_bytes(), (ref / "log.jsonl").read_text()
    assert main([c for c in command if c != "--quiet"] + ["--out", str(ref)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert ((ref / "checkpoint" / "model.safetensors").read_bytes(), (ref / "log.jsonl").read_text()) == before


@pytest.mark.parametrize("override, key", [("train.epochs=4", "train.epochs"), ("optim.lr=0.1", "optim.lr"),
                                           ("model.dropout=0", "model.dropout"), ("train.seed=1", "train.seed"),
                                           ("accel.precision=bf16", "accel.precision")])
def test_another_run_in_dir_is_an_error_naming_the_first_differing_key(setup, capsys, override, key):
    root, command = setup
    ref = root / "reference"
    before = sorted(p.name for p in ref.iterdir()), (ref / "config.yaml").read_bytes()
    assert main([*command, "--out", str(ref), override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"holds another run: its {key} is" in err and "choose another --out" in err
    assert (sorted(p.name for p in ref.iterdir()), (ref / "config.yaml").read_bytes()) == before


def test_another_data_folder_is_named(setup, capsys, tmp_path):
    root, command = setup
    other = write_image_folder(tmp_path / "other", 96, 32, 8, classes=3)
    argv = [*command, "--out", str(root / "reference")]
    argv[argv.index("--data") + 1] = str(other)
    assert main(argv) == 2
    assert "its data.path is" in capsys.readouterr().err


def test_an_imported_checkpoint_or_a_folder_of_other_files_is_an_error(setup, capsys):
    root, command = setup
    imported = root / "imported"
    shutil.copytree(root / "reference", imported)
    (imported / "summary.json").unlink()
    (imported / "imported.json").write_text(json.dumps({"layout": "xternalz"}))  # as `wrn import` marks it
    assert main([*command, "--out", str(imported)]) == 2
    assert "holds an imported checkpoint" in capsys.readouterr().err  # and says --init
    other = root / "other-files"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main([*command, "--out", str(other)]) == 2
    assert "is not empty and holds no run (no config.yaml)" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_what_a_budget_decided_is_not_a_difference():
    """A budgeted run writes its steps (and, with train.budget_min_epochs, a narrower WRN of the
    same depth) into config.yaml: the command that started it is still the same run. Controls: the
    same keys differ without a budget, and a model no budget would pick is another run."""
    command = load_config(overrides=["model.name=wrn-16-8", "train.time_budget=15m", "train.budget_min_epochs=10"])
    saved = load_config(overrides=["model.name=wrn-16-2", "train.time_budget=15m", "train.budget_min_epochs=10",
                                   "train.steps=1234"])
    assert first_difference(saved, command) is None
    assert first_difference(load_config(overrides=["model.name=wrn-16-8", "train.time_budget=15m", "train.steps=1234"]),
                            load_config(overrides=["model.name=wrn-16-8", "train.time_budget=15m"])) is None
    unbudgeted = load_config(overrides=["model.name=wrn-16-8", "train.steps=1234"])
    assert first_difference(unbudgeted, load_config(overrides=["model.name=wrn-16-8"]))[0] == "train.steps"
    assert first_difference(load_config(overrides=["model.name=wrn-16-4", "train.steps=1234"]),
                            load_config(overrides=["model.name=wrn-16-8"]))[0] == "model.name"
    for other in ("wrn-16-3", "wrn-22-2", "wrn-16-16"):  # not the same depth, width halved
        cfg = load_config(overrides=[f"model.name={other}", "train.time_budget=15m", "train.budget_min_epochs=10",
                                     "train.steps=1234"])
        assert first_difference(cfg, command)[0] == "model.name", other
    # ... and without budget_min_epochs no budget narrows: the model is the command's
    assert first_difference(load_config(overrides=["model.name=wrn-16-2", "train.time_budget=15m", "train.steps=1"]),
                            load_config(overrides=["model.name=wrn-16-8", "train.time_budget=15m"]))[0] == "model.name"


def test_plan_of_a_missing_or_empty_dir_is_a_fresh_run(tmp_path):
    cfg = load_config(overrides=["model.name=wrn-10-1"])
    assert plan(tmp_path / "missing", cfg).resume is False
    (tmp_path / "empty").mkdir()
    assert plan(tmp_path / "empty", cfg) == (cfg, False, None)


def test_help_says_the_same_command_continues(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the same command continues it" in out and "same --out DIR continues the run" in out
