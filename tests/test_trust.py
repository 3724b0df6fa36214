"""Trust (issue 13): resume tests that can fail, the same weights in the fast mode (compile + bf16),
--resume refusing overrides that change the run, bad input failing fast and leaving nothing, and
`wrn eval RUN --data OTHER`.

Runs are in-process ``fit``/``wrn`` calls on a WRN-10-1 and 8x8 images (one thread). A run is
stopped mid-training by a real SIGTERM at a chosen step (tests/stopping.py), which goes through
the engine's preemption path: finish the step, checkpoint, raise ``Preempted``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import wrn
from wrn.cli import main
from wrn.train.config import RUN_NEUTRAL_KEYS
from wrn.data.loader import DeviceLoader
from wrn.train import accel, checkpoint, dist, preempt
from wrn.train import step as train_steps
from wrn.train.config import load_config
from wrn.train.engine import NonFiniteLoss, fit

from helpers import write_image_folder  # tests/helpers.py
from stopping import differing, records, resumed_from, stop_at, weights  # tests/stopping.py

pytestmark = pytest.mark.usefixtures("one_thread")

SPE = 12  # 96 train images / batch 8
EPOCHS = 3
STOP = 17  # mid-epoch 2, between two checkpoint_every marks
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", f"train.epochs={EPOCHS}", "train.batch_size=8",
        "train.checkpoint_every=5", "data.val_size=0", "optim.schedule=onecycle", "optim.warmup_epochs=1",
        "optim.lr=0.05", "accel.precision=fp32", "accel.channels_last=false", "accel.compile=false",
        "log.every_steps=4", "train.eval_batch_size=32"]


def config(data: Path, cache: Path, *extra: str):
    return load_config(overrides=[*ARGS, f"data.path={data}", f"data.cache_dir={cache}", *extra])


def interrupt(monkeypatch, cfg, out: Path, step: int) -> None:
    """Train ``cfg`` into ``out`` and stop it (SIGTERM) after ``step``."""
    with monkeypatch.context() as m:
        stop_at(m, step)
        with pytest.raises(preempt.Preempted):
            fit(cfg, out, quiet=True)
    assert records(out, "preempted")[-1]["step"] == step


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """An uninterrupted reference run and a copy of the same run stopped at step STOP."""
    root = tmp_path_factory.mktemp("trust")
    data = write_image_folder(root / "data", 96, 32, 8, classes=3)
    cache = root / "cache"
    cfg = config(data, cache)
    fit(cfg, root / "reference", quiet=True)
    mp = pytest.MonkeyPatch()
    try:
        interrupt(mp, cfg, root / "stopped", STOP)
    finally:
        mp.undo()
    return root, data, cache, cfg


def copy_stopped(runs, name: str) -> Path:
    root = runs[0]
    shutil.copytree(root / "stopped", root / name)
    return root / name


# -- 13.3: resume tests that can fail ----------------------------------------------------------------

def test_stopped_and_resumed_is_bit_identical_and_says_it_resumed(runs):
    root, _, _, cfg = runs
    run = copy_stopped(runs, "resumed")
    fit(cfg, run, resume=True, quiet=True)
    assert resumed_from(run) == STOP > 0  # a silent restart from 0 fails here
    assert differing(run, root / "reference") == []
    summary, ref = (json.loads((r / "summary.json").read_text()) for r in (run, root / "reference"))
    assert (summary["test_acc"], summary["train_loss"]) == (ref["test_acc"], ref["train_loss"])
    assert summary["weights_sha256"] == ref["weights_sha256"]  # the summaries alone tell identical weights


def test_control_a_silent_restart_ends_identical_so_the_resume_record_is_what_catches_it(runs):
    """Training is a pure function of the config: starting over ends with the same weights. Only
    the log's resume record tells a resume from a restart."""
    root, _, _, cfg = runs
    run = copy_stopped(runs, "restarted")
    shutil.rmtree(run / checkpoint.CHECKPOINT)  # the resume finds nothing and starts over
    fit(cfg, run, resume=True, quiet=True)
    assert differing(run, root / "reference") == []
    assert resumed_from(run) is None
    assert records(run, "start")[-1]["step"] == 0


def test_control_a_restore_without_momentum_ends_elsewhere(runs, monkeypatch):
    root, _, _, cfg = runs
    run = copy_stopped(runs, "no-momentum")
    monkeypatch.setattr(checkpoint, "load_optimizer", lambda optimizer, ckpt_dir: None)
    fit(cfg, run, resume=True, quiet=True)
    assert resumed_from(run) == STOP
    assert differing(run, root / "reference")  # the negative control: the test above can fail
    summary, ref = (json.loads((r / "summary.json").read_text()) for r in (run, root / "reference"))
    assert summary["weights_sha256"] != ref["weights_sha256"]


def test_control_a_resume_from_batch_0_of_the_epoch_ends_elsewhere(runs, monkeypatch):
    root, _, _, cfg = runs
    run = copy_stopped(runs, "from-batch-0")
    epoch = DeviceLoader.epoch
    monkeypatch.setattr(DeviceLoader, "epoch", lambda self, e, start_step=0: epoch(self, e, 0))
    fit(cfg, run, resume=True, quiet=True)
    assert resumed_from(run) == STOP
    assert differing(run, root / "reference")


# -- 13.2: the compile decision is the config's, recorded and reused ----------------------------------

def compile_records(run: Path) -> list[tuple[str, int, bool]]:
    return [(r["kind"], r["step"], r["compile"]) for r in records(run) if r["kind"] in ("start", "resume")]


def test_eager_decision_is_recorded_and_kept_on_resume(runs, monkeypatch):
    """accel.compile=true on a run the rule runs eager (fp32 on a CPU, and shorter than the
    threshold) stays eager when resumed, even if the rule would now say compile."""
    root, data, cache, _ = runs
    cfg = config(data, cache, "accel.compile=true")
    total = EPOCHS * SPE
    assert total < accel.MIN_STEPS_TO_COMPILE["cpu"]
    run = root / "eager"
    interrupt(monkeypatch, cfg, run, STOP)
    state = checkpoint.read_state(run / checkpoint.CHECKPOINT)
    assert state["decisions"]["compile"] is False
    monkeypatch.setattr(accel, "should_compile", lambda *a: (True, "a later version's rule"))  # deciding again compiles
    fit(cfg, run, resume=True, quiet=True)
    assert compile_records(run) == [("start", 0, False), ("resume", STOP, False)]
    # eager + fp32 throughout: the same weights as the plain reference run
    assert differing(run, root / "reference") == []


def test_fast_mode_killed_in_the_last_10_percent_resumes_bit_identical(runs, monkeypatch, tmp_path):
    """compile + bf16 + channels_last; the run compiles (threshold lowered to 10 steps) and is
    stopped at step 22 of 24. Deciding from the steps left (2 < 10) would resume eager, with other
    weights (issue 13.2: 25 of 25 tensors differed). One compiled run costs a cold compile
    (~1-2 min on 2 busy cores) the first time; later runs load kernels from the compile cache."""
    _, data, cache, _ = runs
    monkeypatch.setitem(accel.MIN_STEPS_TO_COMPILE, "cpu", 10)
    fast = ["accel.compile=true", "accel.precision=bf16", "accel.channels_last=true", "train.epochs=2",
            "optim.warmup_epochs=0.5", "train.checkpoint_every=0"]
    cfg = config(data, cache, *fast)
    total, stop = 2 * SPE, 22
    assert stop >= 0.9 * total
    reference, run = tmp_path / "reference", tmp_path / "stopped"
    fit(cfg, reference, quiet=True)
    interrupt(monkeypatch, cfg, run, stop)
    assert checkpoint.read_state(run / checkpoint.CHECKPOINT)["decisions"]["compile"] is True
    assert not accel.should_compile(True, total - stop, "cpu", "bf16")[0]  # control: the old rule flips to eager
    shutil.copytree(run, tmp_path / "resumed-eager")
    monkeypatch.setitem(accel.MIN_STEPS_TO_COMPILE, "cpu", 1000)  # and so would today's default now
    fit(cfg, run, resume=True, quiet=True)
    assert compile_records(run) == [("start", 0, True), ("resume", stop, True)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compile"] is True
    assert differing(run, reference) == []
    # The summary's hash is the hash of the weights the checkpoint holds.
    assert summary["weights_sha256"] == dist.state_checksum(SimpleNamespace(state_dict=lambda: weights(run)))
    # Control: the same resume run eager (the old behaviour) ends with other weights.
    for name in ("make_train_step", "make_eval_step"):
        make = getattr(train_steps, name)
        monkeypatch.setattr(train_steps, name, lambda *a, make=make, **kw: make(*a, **{**kw, "compile": False}))
    fit(cfg, tmp_path / "resumed-eager", resume=True, quiet=True)
    assert differing(tmp_path / "resumed-eager", reference)


# -- 13.4: --resume refuses overrides that change the run --------------------------------------------

def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("override", ["model.name=wrn-16-2", "train.seed=1", "train.batch_size=16", "optim.lr=0.1",
                                      "accel.precision=bf16", "optim.schedule=step", "data.subset=48",
                                      "train.epochs=4", "accel.compile=true"])
def test_resume_refuses_an_override_that_changes_the_run(runs, capsys, override):
    run = runs[0] / "stopped"
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--quiet", "--resume", str(run), override]) == 2
    err = capsys.readouterr().err.strip()
    key = override.split("=")[0]
    assert len(err.splitlines()) == 1 and key in err and "Traceback" not in err, err
    assert snapshot(run) == before  # nothing written: config.yaml, log, checkpoint all as they were


def test_resume_refuses_another_data_source_and_budget(runs, capsys, tmp_path):
    run = runs[0] / "stopped"
    other = write_image_folder(tmp_path / "other", 96, 8, 8, classes=3, seed=5)
    before = snapshot(run)
    for argv in (["--data", str(other)], ["--budget", "15m"]):
        capsys.readouterr()
        assert main(["train", "--quiet", "--resume", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("data.path" in err or "train.time_budget" in err), err
    assert snapshot(run) == before


def test_after_a_refusal_a_plain_resume_still_works(runs, capsys):
    root = runs[0]
    run = copy_stopped(runs, "refused-then-resumed")
    config_yaml = (run / "config.yaml").read_bytes()
    assert main(["train", "--quiet", "--resume", str(run), "model.name=wrn-16-2"]) == 2
    assert (run / "config.yaml").read_bytes() == config_yaml
    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    assert resumed_from(run) == STOP
    assert differing(run, root / "reference") == []


def test_resume_accepts_safe_overrides_and_unchanged_values(runs):
    root = runs[0]
    run = copy_stopped(runs, "safe-overrides")
    argv = ["train", "--quiet", "--resume", str(run), "train.checkpoint_every=5", "log.every_steps=3",
            "model.name=wrn-10-1", "train.seed=0", "accel.precision=fp32", "--data", str(runs[1])]
    assert main(argv) == 0
    assert resumed_from(run) == STOP
    steps = [r["step"] for r in records(run, "step") if r["step"] > STOP]
    assert steps and all(s % 3 == 0 for s in steps)  # log.every_steps=3 took effect
    assert differing(run, root / "reference") == []  # and the run is still the same run


def test_help_lists_the_overrides_resume_allows(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume" in text
    for key in RUN_NEUTRAL_KEYS:
        assert key in text


# -- 13.10: bad input fails fast and leaves nothing ---------------------------------------------------

@pytest.mark.parametrize("override, key", [("train.epochs=1e99", "train.epochs"), ("train.epochs=2.0", "train.epochs"),
                                           ("train.batch_size=10000000", "train.batch_size"),
                                           ("train.epochs=200.5", "train.epochs"), ("train.seed=1e3", "train.seed")])
def test_integer_keys_refuse_floats_and_absurd_values(runs, capsys, tmp_path, override, key):
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["train", "--quiet", "--data", str(runs[1]), "--out", str(out), *ARGS, override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()
    # control: the same key with a sane integer parses
    assert load_config(overrides=[f"{key}=2"])


def test_offline_download_fails_fast_and_leaves_no_run_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WRN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("WRN_DATA_MIRROR", "http://127.0.0.1:9")  # nothing listens: offline
    capsys.readouterr()
    assert main(["train", "--quiet", "--preset", "quick", "--data", "cifar10", "--out", "X"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "X").exists()
    assert main(["train", "--quiet", "--preset", "quick", "--data", "cifar10"]) == 2  # default --out under runs/
    assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_before_its_first_step_leaves_its_nested_out_parents_neither(runs, capsys, tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert main(["train", "--quiet", "--data", str(runs[1]), "--out", str(out), *ARGS,
                 "train.batch_size=4096"]) == 2  # larger than the training split: fails after mkdir
    assert "train.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_run_that_fails_after_its_first_step_keeps_its_log(runs, tmp_path, monkeypatch):
    """"Leave nothing" is for runs that never trained: a run that diverges at step 3, before any
    checkpoint, keeps config.yaml and the log that says what happened (and --resume starts over)."""
    make = train_steps.make_train_step

    def nan_at_step_3(*args, **kwargs):
        step, calls = make(*args, **kwargs), []

        def patched(x, y):
            calls.append(1)
            return step(x * float("nan") if len(calls) == 4 else x, y)

        return patched

    monkeypatch.setattr(train_steps, "make_train_step", nan_at_step_3)
    out = tmp_path / "diverged"
    with pytest.raises(NonFiniteLoss, match="step 3 "):
        fit(config(runs[1], runs[2], "train.checkpoint_every=0", "log.every_steps=1"), out, quiet=True)
    assert (out / "config.yaml").is_file() and not (out / checkpoint.CHECKPOINT).exists()
    assert records(out, "error")[-1]["step"] == 3


# -- 17.3: wrn eval RUN --data OTHER ----------------------------------------------------------------

def write_folder(root: Path, split: str, classes: list[str], per_class: int, seed: int) -> Path:
    """Colour-cast images like helpers.write_image_folder, for the named classes only."""
    rng = np.random.default_rng(seed)
    for name in classes:
        c = int(name.removeprefix("class"))
        d = root / split / name
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 120, (8, 8, 3)).astype(np.uint8)
            img[..., c % 3] += np.uint8(80 + 40 * (c // 3))
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def by_hand(run: Path, folder: Path, run_classes: list[str]) -> float:
    """Accuracy from the checkpoint's model, the run's normalisation and PIL, label = the run's
    index of the folder's class name."""
    model, state = wrn.load_checkpoint(run)
    mean, std = (torch.tensor(state["normalize"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    files = sorted(folder.glob("*/*.png"))  # folder = a split: <class>/<image>.png
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files])
    x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    labels = torch.tensor([run_classes.index(f.parent.name) for f in files])
    with torch.no_grad():
        return (model(x).argmax(1) == labels).double().mean().item()


@pytest.fixture(scope="module")
def subset_run(runs):
    root, data, cache, _ = runs
    out = root / "subset"
    cfg = config(data, cache, "data.subset=60", "data.val_size=12", "train.epochs=2", "train.checkpoint_every=0")
    fit(cfg, out, quiet=True)
    return out


def test_eval_on_another_folder_with_the_runs_classes(subset_run, capsys, tmp_path):
    """A run trained on data.subset=60 with a val split, evaluated on a folder of 10 test images
    of two of its three classes: the subset and val split do not apply (fewer images than the
    subset), labels follow the run's class names."""
    other = tmp_path / "other"
    write_folder(other, "train", ["class1", "class2"], 2, seed=6)
    write_folder(other, "test", ["class1", "class2"], 5, seed=7)
    capsys.readouterr()
    assert main(["eval", str(subset_run), "--data", str(other), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 10 and result["split"] == "test"
    classes = ["class0", "class1", "class2"]
    assert result["accuracy"] == pytest.approx(by_hand(subset_run, other / "test", classes), abs=1e-12)
    # control: labels by position in the folder (class1 -> 0, class2 -> 1) would score otherwise
    assert by_hand(subset_run, other / "test", ["class1", "class2", "class0"]) != result["accuracy"]


def test_eval_on_a_folder_of_test_images_only(subset_run, capsys, tmp_path):
    other = write_folder(tmp_path / "other", "test", ["class0", "class1", "class2"], 3, seed=7)
    assert main(["eval", str(subset_run), "--data", str(other), "--json"]) == 0


def test_eval_on_a_folder_with_an_unknown_class_is_one_line(subset_run, capsys, tmp_path):
    other = tmp_path / "other"
    for split in ("train", "test"):
        write_folder(other, split, ["class1", "class7"], 3, seed=8)
    capsys.readouterr()
    assert main(["eval", str(subset_run), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class7" in err, err


def test_eval_takes_accel_overrides_and_refuses_the_rest(subset_run, capsys, tmp_path):
    other = tmp_path / "other"
    for split in ("train", "test"):
        write_folder(other, split, ["class0", "class1", "class2"], 4, seed=9)
    capsys.readouterr()
    assert main(["eval", str(subset_run), "--data", str(other), "--json", "accel.precision=bf16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "bf16" and result["images"] == 12 and 0 <= result["accuracy"] <= 1
    fp32 = by_hand(subset_run, other / "test", ["class0", "class1", "class2"])
    assert abs(result["accuracy"] - fp32) <= 2 / 12  # bf16 rounding may flip a close call or two
    assert main(["eval", str(subset_run), "model.name=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.name" in err, err
