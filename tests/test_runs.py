"""`wrn runs`: each status from real tiny runs (finished, interrupted by Ctrl-C, failed on a NaN
loss; one killed before its first checkpoint is copied from a real run's files), found
recursively, as a table and as JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from wrn.cli import main
from wrn.train.config import load_config
from wrn.train.engine import NonFiniteLoss, fit

from helpers import break_at_step, write_image_folder  # tests/helpers.py

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data, cache, *extra):
    return load_config(overrides=["model.name=wrn-10-1", "model.dropout=0", f"data.path={data}", "data.val_size=16",
                                  f"data.cache_dir={cache}", "train.epochs=2", "train.batch_size=16",
                                  "train.checkpoint_every=2", "log.every_steps=1", "accel.device=cpu", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """root/finished, root/group/interrupted, root/group/deeper/failed, root/not-started,
    root/quick-wrn-10-1-20260101-120000 (a run named as `wrn train` names it without --out)."""
    tmp = tmp_path_factory.mktemp("runs")
    data = write_image_folder(tmp / "data", 80, 16, 8)
    root = tmp / "root"
    fit(_cfg(data, tmp / "cache"), root / "finished", quiet=True)
    mp = pytest.MonkeyPatch()
    try:
        break_at_step(mp, 5, "interrupt")
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg(data, tmp / "cache"), root / "group" / "interrupted", quiet=True)
        mp.undo()
        break_at_step(mp, 5, "nan")
        with pytest.raises(NonFiniteLoss):
            fit(_cfg(data, tmp / "cache"), root / "group" / "deeper" / "failed", quiet=True)
    finally:
        mp.undo()
    # What a run killed (SIGKILL, power cut) before its first checkpoint leaves: its config and
    # start record. (A failure the process sees removes such a directory instead.)
    fresh = root / "not-started"
    fresh.mkdir()
    shutil.copy(root / "finished" / "config.yaml", fresh)
    start = (root / "finished" / "log.jsonl").read_text().splitlines()[0]
    assert json.loads(start)["kind"] == "start"
    (fresh / "log.jsonl").write_text(start + "\n")
    shutil.copytree(root / "finished", root / "quick-wrn-10-1-20260101-120000")
    (root / ".hidden" / "run").mkdir(parents=True)
    shutil.copy(root / "finished" / "config.yaml", root / ".hidden" / "run")
    for log in root.rglob("log.jsonl"):  # as if written an hour ago: not still running
        os.utime(log, (time.time() - 3600, time.time() - 3600))
    return root


def _json(root, capsys) -> dict[str, dict]:
    assert main(["runs", str(root), "--json"]) == 0
    return {r["run"]: r for r in json.loads(capsys.readouterr().out)}


def test_each_status(runs, capsys):
    infos = _json(runs, capsys)
    assert sorted(infos) == ["finished", "group/deeper/failed", "group/interrupted", "not-started",
                             "quick-wrn-10-1-20260101-120000"]  # hidden folders are not searched
    summary = json.loads((runs / "finished" / "summary.json").read_text())
    done = infos["finished"]
    assert done["status"] == "finished" and done["model"] == "wrn-10-1" and done["dataset"] == "data"
    assert (done["epochs_done"], done["epochs_total"]) == (2, 2)
    assert (done["test_acc"], done["val_acc"], done["wall_time_s"]) == (summary["test_acc"], summary["val_acc"],
                                                                        summary["wall_time_s"])
    assert done["val_acc"] is not None  # data.val_size=16
    # 64 training images / 16 per batch = 4 steps per epoch; Ctrl-C in step 5 after the step-4 checkpoint.
    stopped = infos["group/interrupted"]
    assert (stopped["status"], stopped["step"], stopped["epochs_done"]) == ("interrupted", 4, 1)
    assert stopped["test_acc"] is None and stopped["wall_time_s"] > 0
    failed = infos["group/deeper/failed"]
    assert (failed["status"], failed["step"], failed["error"]) == ("failed", 5, "non-finite loss")
    fresh = infos["not-started"]
    assert (fresh["status"], fresh["step"], fresh["epochs_done"]) == ("not started", None, 0)
    assert done["preset"] is None and infos["quick-wrn-10-1-20260101-120000"]["preset"] == "quick"


def test_a_failed_run_resumed_past_its_error_is_not_failed(runs, tmp_path, capsys):
    # Control for "failed": the error record counts only until the run is resumed.
    run = tmp_path / "run"
    shutil.copytree(runs / "group" / "deeper" / "failed", run)
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "resume", "step": 4}) + "\n")
    assert _json(tmp_path, capsys)["run"]["status"] == "interrupted"


def test_table(runs, capsys):
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "model", "data", "preset", "epochs", "test", "val", "time", "status"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["finished"].rstrip().endswith("finished") and " 2/2 " in rows["finished"]
    assert "interrupted at step 4 (resumable)" in rows["group/interrupted"]
    assert "failed at step 5: non-finite loss" in rows["group/deeper/failed"]
    assert rows["not-started"].rstrip().endswith("not started")


def test_a_budget_narrowed_run_keeps_its_preset_and_flip_tta_is_marked(runs, tmp_path, capsys):
    """`wrn train --preset quick` names its run after the WRN asked for; a budget that trained a
    narrower one says so in the log, and the preset is still found. Accuracies evaluated with flip
    TTA are marked in the table."""
    import yaml

    run = tmp_path / "quick-wrn-16-4-20260101-120000"
    shutil.copytree(runs / "finished", run)  # trained wrn-10-1
    assert _json(tmp_path, capsys)[run.name]["preset"] is None  # control: the name does not match the model
    log = run / "log.jsonl"
    log.write_text(json.dumps({"kind": "budget_model", "configured": "wrn-16-4", "model": "wrn-10-1"}) + "\n"
                   + log.read_text())
    assert _json(tmp_path, capsys)[run.name]["preset"] == "quick"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["eval_tta"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copytree(runs / "finished", tmp_path / "plain")
    assert main(["runs", str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[run.name][5].endswith("%+flip") and rows[run.name][6].endswith("%+flip")
    assert rows["plain"][5].endswith("%") and rows["plain"][6].endswith("%")  # control: one view


def test_the_preset_comes_from_the_command_that_made_the_run(runs, tmp_path, capsys):
    """A budget that may choose the model names the run `<preset>-<date>-<time>`: the preset is
    read from the start record's command line. Control: a name alone that is no preset's says nothing."""
    run = tmp_path / "quick-20260101-120000"
    shutil.copytree(runs / "finished", run)
    shutil.copytree(runs / "finished", tmp_path / "mine-20260101-120000")
    log = run / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for r in lines:
        if r["kind"] == "start":
            r["provenance"] = {"command": "wrn train --preset quick --data cifar10"}
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    infos = _json(tmp_path, capsys)
    assert infos["quick-20260101-120000"]["preset"] == "quick" and infos["mine-20260101-120000"]["preset"] is None


def test_a_recently_written_log_may_be_a_live_run(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "group" / "interrupted", run)
    (run / "log.jsonl").touch()  # control for the table test, where every log is an hour old
    assert main(["runs", str(tmp_path)]) == 0
    assert re.search(r"running\? \(log written \d+s ago; at step 4\)", capsys.readouterr().out)


def test_a_run_dir_itself_and_an_empty_dir(runs, tmp_path, capsys):
    assert [r["status"] for r in _json(runs / "finished", capsys).values()] == ["finished"]
    assert main(["runs", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_damaged_files_do_not_stop_the_listing(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "finished", run)
    (run / "summary.json").write_text("{cut sho")
    (run / "config.yaml").write_text(": not yaml [")
    info = _json(tmp_path, capsys)["run"]
    assert info["status"] == "interrupted" and info["model"] == "?"  # the checkpoints are still there


def test_missing_dir_is_one_line(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
