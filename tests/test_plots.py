"""Per-run learning curves (curves.png): cheap, and never an exception on a partial log."""

from __future__ import annotations

import json
import math

import pytest
from test_report import PNG_MAGIC, write_run

from wrn.experiments import plots


def epoch(e: int, **values) -> dict:
    return {"kind": "epoch", "epoch": e, "step": 10 * (e + 1), **values}


def write_log(run_dir, records: list, tail: str = ""):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("model:\n  name: wrn-10-1\n")
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run_dir


def test_curves_of_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, model="wrn-10-1", test_error=20.0, epochs=3)
    curves = plots.run_curves(run_dir)
    assert [x for x, _ in curves["train_acc"]] == [1, 2, 3]  # epochs done, not the log's 0-based count
    assert [round(v, 4) for _, v in curves["lr"]] == [0.1, 0.02, 0.004]
    path = plots.plot_run_curves(run_dir)
    assert path == run_dir / "curves.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "curves.png", "log.jsonl", "summary.json"]


def test_a_partial_log_plots_what_it_has(tmp_path):
    """A run killed mid-line, with a diverged (null) loss, no val split, a resumed epoch written
    twice and lines that are not epoch records at all."""
    run_dir = write_log(tmp_path / "run", [
        {"kind": "start", "step": 0},
        epoch(0, train_loss=2.0, train_acc=0.3, lr=0.1),
        epoch(1, train_loss=None, train_acc=0.2, lr=0.1),  # the log writes NaN as null
        epoch(1, train_loss=1.5, train_acc=0.4, lr=0.1),  # the same epoch again after a resume
        {"kind": "epoch", "epoch": "2", "train_acc": 0.9},  # not a record the engine writes
        [1, 2, 3],
        epoch(2, train_loss="nan", train_acc=True, lr=0.02),
    ], tail='{"kind": "epoch", "epoch": 3, "train_lo')
    curves = plots.run_curves(run_dir)
    assert curves["train_loss"] == [(1, 2.0), (2, 1.5)]
    assert curves["train_acc"] == [(1, 0.3), (2, 0.4)]
    assert curves["val_acc"] == [] and curves["lr"] == [(1, 0.1), (2, 0.1), (3, 0.02)]
    assert plots.plot_run_curves(run_dir).read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("log", ["", '{"kind": "start", "step": 0}\n', '{"kind": "epo', "\x00\xff garbage"])
def test_no_finished_epoch_means_no_figure(tmp_path, log):
    run_dir = write_log(tmp_path / "run", [], tail=log)
    assert plots.plot_run_curves(run_dir) is None
    assert not (run_dir / "curves.png").exists()


def test_missing_log_means_no_figure(tmp_path):
    assert plots.plot_run_curves(tmp_path) is None


def test_number_rejects_what_json_lets_through():
    assert plots._number(0.5) == 0.5 and plots._number(3) == 3.0
    assert [plots._number(v) for v in (None, "0.5", True, math.inf, math.nan, [1])] == [None] * 6


def test_lr_comes_from_every_step_when_the_log_gives_steps_per_epoch(tmp_path):
    """A warm-up inside the first epoch shows in the lr curve (the epoch records alone miss it)."""
    run_dir = write_log(tmp_path / "run", [
        {"kind": "start", "step": 0, "steps_per_epoch": 4, "lr": 0.1},
        {"kind": "step", "epoch": 0, "step": 1, "loss": 2.0, "lr": 0.025},
        {"kind": "step", "epoch": 0, "step": 2, "loss": 2.0, "lr": 0.05},
        epoch(0, step=4, train_loss=2.0, train_acc=0.3, lr=0.1),
        {"kind": "step", "epoch": 1, "step": 6, "loss": 1.0, "lr": 0.08},
        epoch(1, step=8, train_loss=1.0, train_acc=0.5, lr=0.05),
        {"kind": "step", "epoch": 2, "step": 10, "loss": 1.0, "lr": 0.04},  # an epoch not finished
    ])
    curves = plots.run_curves(run_dir)
    assert curves["lr"] == [(0.25, 0.025), (0.5, 0.05), (1.0, 0.1), (1.5, 0.08), (2.0, 0.05), (2.5, 0.04)]
    assert curves["train_loss"] == [(1, 2.0), (2, 1.0)]  # the other curves stay per epoch
    write_log(run_dir, [{"kind": "start", "step": 0, "steps_per_epoch": 4}, {"kind": "step", "step": 1, "lr": 0.1}])
    assert plots.plot_run_curves(run_dir) is None  # steps but no finished epoch: nothing to plot yet
