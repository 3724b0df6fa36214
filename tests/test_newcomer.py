"""The README's path, as a new user walks it: `wrn train --preset quick` with no --out, then every
command a user runs next on what it made - `wrn runs`, `wrn eval`, `wrn predict` (files, a folder,
an archive), `wrn export --onnx`, `wrn report RUN` - each a real `wrn` process.

The run is the preset as it is (precision auto, compile as the preset decides, flip TTA, the
budget choosing the steps and possibly a narrower WRN) on a small image folder with a short
budget and a small validation split; everything else is the preset's own.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from helpers import write_image_folder  # tests/helpers.py

BUDGET = "45s"


def wrn(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "wrn", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"wrn {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The README's main job with the data swapped for a small folder: no --out, as the README has it."""
    home = tmp_path_factory.mktemp("newcomer")
    data = write_image_folder(home / "data", 384, 64, 32)
    out = wrn(home, "train", "--preset", "quick", "--data", str(data), "--budget", BUDGET, "data.val_size=64",
              f"data.cache_dir={home / 'cache'}")
    runs = sorted((home / "runs").iterdir())
    assert len(runs) == 1, runs
    return home, data, runs[0], out


def test_the_run_is_named_after_what_it_trained_and_says_where_it_is(quick_run):
    home, _, run, out = quick_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == cfg["model"]["name"]
    # The budget decides after the directory is named: the name holds the preset alone, no model.
    assert run.name.startswith("quick-") and "wrn-" not in run.name
    assert f"run directory {Path('runs') / run.name}" in out.stdout + out.stderr
    assert cfg["accel"]["precision"] == "auto" and cfg["train"]["eval_tta"] is True and cfg["train"]["steps"] > 0
    assert (run / "curves.png").is_file()  # matplotlib comes with the README's install
    assert summary["provenance"]["command"].startswith("wrn train --preset quick")


def test_runs_lists_it_finished(quick_run):
    home, _, run, _ = quick_run
    rows = json.loads(wrn(home, "runs", "--json").stdout)
    (info,) = rows if isinstance(rows, list) else rows.values()
    assert info["status"] == "finished" and info["preset"] == "quick"
    summary = json.loads((run / "summary.json").read_text())
    assert info["epochs_total"] == pytest.approx(summary["epochs"], abs=1e-3)  # the budget's steps, not the recipe's


def test_eval_gives_the_runs_own_test_accuracy(quick_run):
    home, _, run, _ = quick_run
    result = json.loads(wrn(home, "eval", str(run.relative_to(home)), "--json").stdout)
    assert result["accuracy"] == json.loads((run / "summary.json").read_text())["test_acc"]


def test_predict_files_a_folder_and_an_archive(quick_run):
    home, data, run, _ = quick_run
    rel = str(run.relative_to(home))
    files = sorted((data / "test" / "class1").iterdir())[:3]
    with tarfile.open(home / "images.tar", "w") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    answers = {}
    for name, paths in (("files", [str(f) for f in files]), ("folder", [str(data / "test" / "class1")]),
                        ("archive", [str(home / "images.tar")])):
        wrn(home, "predict", rel, *paths, "--out", f"{name}.csv")
        with open(home / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        # the answers (classes, probabilities) by image file name, the path it came by left out
        answers[name] = {Path(r.pop("file").split(":")[-1]).name: r for r in rows}
    for f in files:  # the same image gets the same answer whichever way it came
        assert answers["files"][f.name] == answers["archive"][f.name]
        assert answers["files"][f.name] == answers["folder"][f.name]


def test_export_to_onnx_and_report_the_run(quick_run):
    home, _, run, _ = quick_run
    rel = str(run.relative_to(home))
    out = wrn(home, "export", rel, "--onnx", "model.onnx").stdout
    assert (home / "model.onnx").stat().st_size > 0 and "max abs difference" in out
    (run / "curves.png").unlink()
    wrn(home, "report", rel)
    assert (run / "curves.png").is_file()
