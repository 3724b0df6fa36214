"""`--budget` (train.time_budget): the step choice, the schedule's shape at any length, a run that
times its own warm-up (a fixed step time stands for the clock), what it records, an exact resume
before and after it decides, narrowing, and one real tiny run that ends within its budget."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

from wrn.cli import main
from wrn.errors import UserError
from wrn.models import create_model
from wrn.train import accel, budget, checkpoint, pace, preempt
from wrn.train.budget import Costs, choose_steps
from wrn.train.config import load_config
from wrn.train.engine import fit
from wrn.units import parse_duration

from helpers import write_image_folder  # tests/helpers.py
from stopping import differing, records, resumed_from, stop_at  # tests/stopping.py

pytestmark = pytest.mark.usefixtures("one_thread")


# -- durations -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("900", 900),
                                           (900, 900), ("1d", 86400), ("0", 0), (" 2H ", 7200), ("1.5m", 90)])
def test_parse_duration_accepts(text, seconds):
    assert parse_duration("train.time_budget", text) == seconds


@pytest.mark.parametrize("text", ["junk", "15x", "m15", "15m junk", "1h-30m", "-5", "-5m", "", "inf", "nan",
                                  "400d", True, "1e99"])
def test_parse_duration_refuses_junk_in_one_line_naming_the_key(text):
    with pytest.raises(UserError) as e:
        parse_duration("train.time_budget", text)
    assert "train.time_budget" in str(e.value) and "\n" not in str(e.value)


def test_budget_flag_and_key_parse_the_same():
    assert load_config(overrides=["train.time_budget=1h30m"]).train.time_budget == 5400
    with pytest.raises(UserError, match="train.time_budget"):
        load_config(overrides=["train.time_budget=soon"])


# -- the choice ----------------------------------------------------------------------------------

def cost(n: int, costs: Costs, spe: int, eval_per_epoch: int, final: int, elapsed: float) -> float:
    """Everything a run of n steps spends, as the budget must count it."""
    return (elapsed + n * costs.step_s + math.ceil(n / spe) * eval_per_epoch * costs.eval_image_s
            + final * costs.eval_image_s)


@pytest.mark.parametrize("budget_s, elapsed, spe, eval_per_epoch, final", [
    (900, 30, 390, 5000, 10000), (900, 30, 7, 0, 100), (120, 10, 50, 2000, 2000), (7200, 100, 100, 50000, 0)])
def test_choose_steps_fits_and_is_the_most_that_fits(budget_s, elapsed, spe, eval_per_epoch, final):
    costs = Costs(step_s=0.2, eval_image_s=0.001)
    n = choose_steps(budget_s, elapsed, costs, steps_per_epoch=spe, eval_images_per_epoch=eval_per_epoch,
                     final_eval_images=final)
    margin = budget.MARGIN_FRACTION * budget_s + budget.MARGIN_S
    assert cost(n, costs, spe, eval_per_epoch, final, elapsed) <= budget_s - margin
    assert cost(n + 1, costs, spe, eval_per_epoch, final, elapsed) > budget_s - margin - 1e-9  # (rounding)
    assert cost(n, costs, spe, eval_per_epoch, final, elapsed) > 0.9 * (budget_s - margin)  # uses the budget


def test_steps_already_taken_count_once():
    """Chosen at step 300 after 60 s, the total is the 300 steps taken (part of the run, not lost)
    plus what the time left buys."""
    costs = Costs(step_s=0.2, eval_image_s=0.0)
    kw = dict(steps_per_epoch=1000, eval_images_per_epoch=0, final_eval_images=0)
    later = choose_steps(900, 60, costs, done=300, **kw)
    assert later == 300 + choose_steps(900, 60, costs, **kw)
    assert choose_steps(900, 900, costs, done=300, **kw) == 300  # past its budget: it stops where it is


def test_per_epoch_evaluation_is_counted():
    costs = Costs(step_s=0.1, eval_image_s=0.01)  # evaluating 1000 images costs 100 steps
    kw = dict(steps_per_epoch=100, final_eval_images=0)
    without = choose_steps(600, 0, costs, eval_images_per_epoch=0, **kw)
    with_val = choose_steps(600, 0, costs, eval_images_per_epoch=1000, **kw)
    assert with_val < without
    # one epoch of training costs as much as its evaluation: about half the steps
    assert with_val == pytest.approx(without / 2, abs=100)


def test_checkpoints_are_counted():
    """Each epoch end writes a checkpoint, and so does every train.checkpoint_every-th step: with
    tiny epochs (a small dataset) those writes are a large share of the time."""
    kw = dict(steps_per_epoch=10, eval_images_per_epoch=0, final_eval_images=0)
    free = choose_steps(600, 0, Costs(step_s=0.1, eval_image_s=0.0), **kw)
    costs = Costs(step_s=0.1, eval_image_s=0.0, checkpoint_s=1.0)  # a checkpoint = one epoch of steps
    at_epoch_ends = choose_steps(600, 0, costs, **kw)
    assert at_epoch_ends == pytest.approx(free / 2, abs=10)
    also_every_5 = choose_steps(600, 0, costs, checkpoint_every=5, **kw)
    assert also_every_5 == pytest.approx(free / 4, abs=10)
    margin = budget.MARGIN_FRACTION * 600 + budget.MARGIN_S
    assert also_every_5 * 0.1 + math.ceil(also_every_5 / 10) * 1.0 + also_every_5 // 5 * 1.0 <= 600 - margin


def test_final_evaluation_and_start_up_are_counted():
    costs = Costs(step_s=1.0, eval_image_s=0.01)
    kw = dict(steps_per_epoch=10, eval_images_per_epoch=0)
    base = choose_steps(600, 0, costs, final_eval_images=0, **kw)
    assert choose_steps(600, 0, costs, final_eval_images=10000, **kw) == pytest.approx(base - 100, abs=1)
    assert choose_steps(600, 100, costs, final_eval_images=0, **kw) == pytest.approx(base - 100, abs=1)


@pytest.mark.parametrize("elapsed", [0.5, 40.0, 53.9, 3000.0])
def test_a_budget_start_up_spent_is_one_line_naming_a_minimum_that_is_accepted(elapsed):
    with pytest.raises(UserError) as e:
        budget.check_start(elapsed + 1, elapsed)
    message = str(e.value)
    assert "\n" not in message and "train.time_budget" in message and "too short" in message
    minimum = int(message.split("--budget ")[1].split("m")[0])
    budget.check_start(minimum * 60, elapsed)  # control: the minimum it names passes the same test


@pytest.mark.parametrize("budget_s, window_s", [(20, 2.0), (900, 60.0), (3600, 180.0), (86400, 4320.0)])
def test_the_window_is_a_minute_or_a_few_percent_and_at_most_a_tenth(budget_s, window_s):
    assert budget.window_seconds(budget_s) == pytest.approx(window_s)


# -- budgeted runs ----------------------------------------------------------------------------------

SPE = 12  # 96 train images / batch 8
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", "train.epochs=200", "train.batch_size=8", "data.val_size=16",
        "optim.schedule=onecycle", "optim.warmup_epochs=5", "optim.lr=0.05", "accel.precision=fp32",
        "accel.channels_last=false", "accel.compile=false", "log.every_steps=4", "train.eval_batch_size=32"]
WARMUP = 5 * SPE  # optim.warmup_steps a budgeted run fixes: the window ends there for these tiny nets
STEP_S = 2.0  # what the run's timing says a step costs: 300 s then buys ~135 steps


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    return write_image_folder(root / "data", 112, 32, 8, classes=3), root / "cache"


def fixed_pace(monkeypatch, step_s: float = STEP_S) -> list[int]:
    """The run times its real steps, but every timing says ``step_s``: the choice is the same on
    any machine. Returns the steps at which the run decided."""
    decided = []
    real = pace.Pace._decide
    monkeypatch.setattr(pace.Pace, "step_s", lambda self, done, now: step_s)
    monkeypatch.setattr(pace.Pace, "_decide", lambda self, done, s: decided.append(done) or real(self, done, s))
    return decided


def budget_config(data, *extra: str):
    folder, cache = data
    return load_config(overrides=[*ARGS, f"data.path={folder}", f"data.cache_dir={cache}", *extra])


def test_a_budgeted_run_times_its_warm_up_records_its_choice_and_replays_exactly(data, tmp_path, monkeypatch):
    """The run trains from step 0, decides at the end of its warm-up (fixed in steps and written
    into config.yaml first), writes train.steps, and goes on; a preemption after the decision
    resumes without deciding again; a replay of config.yaml gives the same weights bit for bit."""
    run = tmp_path / "budgeted"
    decided = fixed_pace(monkeypatch)
    monkeypatch.setattr(pace, "FIRST_ESTIMATE_S", 0.0)  # an unbudgeted run would estimate after every few steps
    with monkeypatch.context() as m:
        stop_at(m, WARMUP + 10)
        with pytest.raises(preempt.Preempted):
            fit(budget_config(data, "train.time_budget=300"), run, quiet=True)
    assert decided == [WARMUP]
    recorded = load_config(config_file=run / "config.yaml")
    steps = recorded.train.steps
    assert recorded.optim.warmup_steps == WARMUP and WARMUP + 10 < steps <= WARMUP + 300 / STEP_S
    (choice,) = records(run, "budget")
    assert choice["step"] == WARMUP and choice["steps"] == steps and choice["step_s"] == STEP_S
    assert len(records(run, "estimate")) == 1  # the choice's own; no unbudgeted estimates after it

    def decide_again(*a, **k):
        raise AssertionError("a resumed budgeted run that has decided must not decide again")

    monkeypatch.setattr(pace.Pace, "_decide", decide_again)
    resumed = fit(recorded, run, resume=True, quiet=True)
    assert resumed_from(run) == WARMUP + 10
    summary = json.loads((run / "summary.json").read_text())
    assert summary["time_budget_s"] == 300 and summary["budget_steps"] == steps == summary["steps"] == resumed["steps"]
    epochs = records(run, "epoch")
    assert epochs[-1]["step"] == steps  # may end mid-epoch; the schedule ends there
    assert epochs[-1]["lr"] <= 0.05 / (steps - WARMUP - 1) + 1e-12  # onecycle: one decay step from 0

    replay = tmp_path / "replay"
    fit(recorded, replay, quiet=True)  # train.steps is set: no decision
    assert differing(run, replay) == []
    # Control: the same steps with a warm-up stretched to them (not fixed before the choice) differ.
    fit(budget_config(data, f"train.steps={steps}"), tmp_path / "stretched", quiet=True)
    assert differing(run, tmp_path / "stretched")


def test_a_run_stopped_before_it_decided_resumes_and_decides(data, tmp_path, monkeypatch):
    run = tmp_path / "early"
    decided = fixed_pace(monkeypatch)
    with monkeypatch.context() as m:
        stop_at(m, 20)
        with pytest.raises(preempt.Preempted):
            fit(budget_config(data, "train.time_budget=300"), run, quiet=True)
    early = load_config(config_file=run / "config.yaml")
    assert decided == [] and early.train.steps == 0 and early.optim.warmup_steps == WARMUP
    fit(early, run, resume=True, quiet=True)
    assert decided == [WARMUP] and resumed_from(run) == 20
    recorded = load_config(config_file=run / "config.yaml")
    fit(recorded, tmp_path / "replay", quiet=True)
    assert differing(run, tmp_path / "replay") == []  # the steps before the choice were the chosen run's


def test_the_timed_evaluation_is_the_runs_own_flip_tta_included(data, tmp_path, monkeypatch):
    """train.eval_tta doubles every evaluation: the timed batch must run both views, or the budget
    would under-count evaluation and overrun. Control: without it, one view."""
    real = pace._eval_image_s
    views: list[float] = []
    seen: list[int] = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.append(len(inputs[0]))

    def timed(run):
        seen.clear()
        seconds = real(run)
        views.append(sum(seen) / sum(len(x) for x, _ in list(run.loaders["test"].epoch(0))[:2]))
        return seconds

    monkeypatch.setattr(pace, "_eval_image_s", timed)
    fixed_pace(monkeypatch)
    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        for tta, expected in ((True, 2.0), (False, 1.0)):
            views.clear()
            cfg = budget_config(data, "train.time_budget=300", f"train.eval_tta={str(tta).lower()}")
            monkeypatch.setattr(budget, "choose_steps", lambda *a, done, **k: done)  # the choice is tested above
            fit(cfg, tmp_path / f"tta-{tta}", quiet=True)
            assert views == [expected]
    finally:
        hook.remove()


def test_a_real_20s_budget_ends_within_it(data, tmp_path, capsys):
    """Behaviour, not a benchmark: the real clock chooses the steps, and the run (start-up and final
    evaluation included) ends near its budget, far below the 200 epochs it asked for."""
    folder, cache = data
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--data", str(folder), "--out", str(out), "--budget", "20s", *ARGS,
                 f"data.cache_dir={cache}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time_budget_s"] == 20 and summary["budget_steps"] == summary["steps"] >= 1
    assert summary["steps"] < 200 * SPE
    assert summary["wall_time_s"] <= 20 + 20  # generous: a busy shared machine
    assert load_config(config_file=out / "config.yaml").train.steps == summary["steps"]
    assert len(records(out, "budget")) == 1 and len(records(out, "estimate")) == 1


def test_an_unbudgeted_run_estimates_its_wall_time_after_its_first_timed_step(data, tmp_path, monkeypatch):
    """After the first timed step or 30 s of training, whichever is later; then refined at 4x the
    training time. Control: a run shorter than 30 s of training says nothing."""
    monkeypatch.setattr(pace, "FIRST_ESTIMATE_S", 0.0)  # as if the settle steps had taken 30 s
    out = tmp_path / "run"
    fit(budget_config(data, "train.epochs=2", "optim.warmup_epochs=0"), out, quiet=True)
    estimate = records(out, "estimate")
    assert estimate[0]["step_s"] > 0 and estimate[0]["wall_s"] > 0
    steps = [r["step"] for r in records(out, "step")]
    assert len(estimate) < len(steps)  # refined ever more rarely, not every step
    monkeypatch.undo()
    fit(budget_config(data, "train.epochs=2", "optim.warmup_epochs=0"), tmp_path / "short", quiet=True)
    assert records(tmp_path / "short", "estimate") == []
    long = budget.estimate_line(2 * 86400)  # more than a day: says what to do
    assert long.endswith("or train on a GPU") and "--budget" in long
    assert "--budget" not in budget.estimate_line(3600)


def test_a_run_killed_before_it_decided_can_be_resumed(data, tmp_path, monkeypatch):
    """SIGKILL inside the window (compile warm-up can take a minute): the run directory already
    holds config.yaml, so --resume continues it and decides then."""
    from test_faults import fork_wrn, wait  # the forked `wrn` runner

    folder, cache = data
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # the child inherits the patch
        m.setattr(pace.Pace, "_decide", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
        pid = fork_wrn(["train", "--quiet", "--data", str(folder), "--out", str(run), "--budget", "300s", *ARGS,
                        f"data.cache_dir={cache}"], tmp_path / "log")
    assert wait(pid) == -signal.SIGKILL
    assert (run / "config.yaml").is_file() and load_config(config_file=run / "config.yaml").train.steps == 0
    fixed_pace(monkeypatch)
    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget_steps"] == summary["steps"] == load_config(config_file=run / "config.yaml").train.steps


def test_too_short_a_budget_is_one_line_and_leaves_nothing(data, tmp_path, capsys):
    folder, cache = data
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--quiet", "--data", str(folder), "--out", str(out), "--budget", "1s", *ARGS,
                 f"data.cache_dir={cache}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.time_budget" in err and "--budget 1m" in err, err
    assert not out.exists()


def test_a_budget_with_a_schedule_it_cannot_time_is_refused():
    with pytest.raises(UserError, match="optim.warmup_epochs"):
        load_config(overrides=["optim.schedule=cosine", "train.time_budget=15m"])
    load_config(overrides=["optim.schedule=step", "train.time_budget=15m"])  # timed before the first drop


# -- a narrower WRN when the budget is short (train.budget_min_epochs) ------------------------------

def narrower(model: str, epochs: float, min_epochs: float, spe: int = 100) -> str | None:
    cfg = load_config(overrides=[f"model.name={model}", f"train.budget_min_epochs={min_epochs}"])
    return budget.narrower_model(cfg, round(epochs * spe), spe)


def test_a_wrn_that_gets_its_epochs_is_kept():
    assert narrower("wrn-16-4", 6.0, 3.0) is None
    assert narrower("wrn-16-4", 0.5, 0) is None  # 0: never change the model
    assert narrower("resnet-110", 0.5, 3.0) is None  # no WRN: nothing to narrow


@pytest.mark.parametrize("epochs, min_epochs, expected", [
    (0.7, 2.5, "wrn-16-2"),  # 0.7 x 3.9 (the FLOP ratio) = 2.7 epochs are expected of WRN-16-2
    (0.7, 3.0, "wrn-16-1"),  # 2.7 < 3: halve again
    (0.01, 3.0, "wrn-16-1"),  # width 1 is the floor, even when it will not get them
])
def test_the_widest_narrower_wrn_expected_to_get_the_epochs(epochs, min_epochs, expected):
    assert narrower("wrn-16-4", epochs, min_epochs) == expected


def test_an_odd_width_halves_to_whole_widths():
    assert narrower("wrn-28-10", 0.1, 1.0) == "wrn-28-2"  # 10 -> 5 -> 2 (x 4.9 FLOPs)


def test_a_budgeted_run_that_narrows_starts_over_records_its_model_and_replays_exactly(data, tmp_path, monkeypatch):
    """WRN-10-2 would get ~11 epochs of the 300 s, fewer than asked: the run starts over from step 0
    with WRN-10-1, times it in turn, and config.yaml says so; replaying it gives the same weights."""
    cfg = budget_config(data, "train.time_budget=300", "model.name=wrn-10-2", "train.budget_min_epochs=50")
    run = tmp_path / "narrowed"
    decided = fixed_pace(monkeypatch)
    summary = fit(cfg, run, quiet=True)
    assert decided == [WARMUP]  # once, for the net trained
    recorded = load_config(config_file=run / "config.yaml")
    assert recorded.model.name == summary["model"] == "wrn-10-1" and summary["configured_model"] == "wrn-10-2"
    assert recorded.train.steps == summary["steps"] and records(run, "budget_model")[0]["configured"] == "wrn-10-2"
    assert [r["params"] for r in records(run, "start")] == [summary["params"]]  # WRN-10-2's lines are gone
    assert summary["params"] == sum(p.numel() for p in create_model("wrn-10-1", num_classes=3).parameters())
    fit(recorded, tmp_path / "replay", quiet=True)  # train.steps is set: no decision
    assert differing(run, tmp_path / "replay") == []
    # Control: asking for no minimum keeps WRN-10-2.
    kept = fit(budget_config(data, "train.time_budget=300", "model.name=wrn-10-2"), tmp_path / "kept", quiet=True)
    assert kept["model"] == "wrn-10-2" and kept["configured_model"] is None


@pytest.mark.parametrize("keep_memory", [True, False])
def test_the_budget_times_steps_with_the_memory_setting_training_uses(data, tmp_path, monkeypatch, keep_memory):
    """accel.keep_memory makes a CPU step 11-15% faster: set only after the timing, the budget
    timed slower steps than training took and went unused. Control: off, it is never set."""
    events = []
    fixed_pace(monkeypatch)
    monkeypatch.setattr(accel, "keep_freed_memory", lambda device: events.append("keep") or True)
    real_init = pace.Pace.__init__
    monkeypatch.setattr(pace.Pace, "__init__", lambda self, *a, **k: events.append("time") or real_init(self, *a, **k))
    fit(budget_config(data, "train.time_budget=300", f"accel.keep_memory={str(keep_memory).lower()}",
                      "train.steps=0"), tmp_path / "run", quiet=True)
    assert events == (["keep", "time"] if keep_memory else ["time"])
