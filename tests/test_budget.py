"""`--budget` (train.time_budget): the probe and the step choice with a fake clock, the schedule's
shape at any length, what a budgeted run records, an exact resume that never decides again, and
one real tiny run that ends within its budget."""

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
from wrn.train import accel, budget, checkpoint, preempt
from wrn.train.budget import Probe, choose_steps, measure
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


# -- the probe, with a fake clock --------------------------------------------------------------------

class FakeMachine:
    """A clock that moves only when the probe "trains" or "evaluates": compiling steps (the
    warm-up) cost 30 s each, later steps 0.5 s, an evaluation batch of 50 images 0.1 s."""

    def __init__(self):
        self.now = 1000.0
        self.steps = self.evals = 0

    def clock(self) -> float:
        return self.now

    def train_step(self) -> None:
        self.steps += 1
        self.now += 30.0 if self.steps <= budget.WARMUP_STEPS else 0.5

    def eval_batch(self) -> int:
        self.evals += 1
        self.now += 20.0 if self.evals == 1 else 0.1
        return 50


def test_measure_times_steps_after_warm_up():
    m = FakeMachine()
    probe = measure(m.train_step, m.eval_batch, clock=m.clock)
    assert probe == Probe(step_s=pytest.approx(0.5), eval_image_s=pytest.approx(0.1 / 50))
    assert m.steps == budget.WARMUP_STEPS + budget.TIMED_STEPS  # a fixed count: torchrun ranks stay in step


def test_measure_stops_timing_slow_steps_once_they_took_their_share():
    """Steps of 0.5 s with 1.6 s to spend: timed over the minimum (4 steps, 2 s), not 16."""
    m = FakeMachine()
    probe = measure(m.train_step, m.eval_batch, clock=m.clock, max_s=1.6)
    assert probe.step_s == pytest.approx(0.5)
    assert m.steps == budget.WARMUP_STEPS + budget.MIN_TIMED_STEPS
    m = FakeMachine()  # control: with 5 s to spend the timing runs 10 steps
    measure(m.train_step, m.eval_batch, clock=m.clock, max_s=5.0)
    assert m.steps == budget.WARMUP_STEPS + 10


def test_measure_stops_where_every_process_agrees():
    """Under torchrun another process's clock may run out first: all stop at that same step."""
    m = FakeMachine()
    votes = []
    measure(m.train_step, m.eval_batch, clock=m.clock, agree=lambda stop: votes.append(stop) or len(votes) == 3)
    assert votes == [False] * 3  # this process's clock had time left (max_s unset), the others' did not
    assert m.steps == budget.WARMUP_STEPS + budget.MIN_TIMED_STEPS + 2


def test_measure_control_a_clock_that_counts_warm_up_gives_another_answer():
    """The fake machine's warm-up is expensive: had the probe timed it, step_s would be far off."""
    m = FakeMachine()
    t0 = m.clock()
    for _ in range(budget.WARMUP_STEPS + budget.TIMED_STEPS):
        m.train_step()
    assert (m.clock() - t0) / (budget.WARMUP_STEPS + budget.TIMED_STEPS) > 5 * 0.5


# -- the choice ----------------------------------------------------------------------------------

def cost(n: int, probe: Probe, spe: int, eval_per_epoch: int, final: int, elapsed: float) -> float:
    """Everything a run of n steps spends, as the budget must count it."""
    return (elapsed + n * probe.step_s + math.ceil(n / spe) * eval_per_epoch * probe.eval_image_s
            + final * probe.eval_image_s)


@pytest.mark.parametrize("budget_s, elapsed, spe, eval_per_epoch, final", [
    (900, 30, 390, 5000, 10000), (900, 30, 7, 0, 100), (120, 10, 50, 2000, 2000), (7200, 100, 100, 50000, 0)])
def test_choose_steps_fits_and_is_the_most_that_fits(budget_s, elapsed, spe, eval_per_epoch, final):
    probe = Probe(step_s=0.2, eval_image_s=0.001)
    n = choose_steps(budget_s, elapsed, probe, steps_per_epoch=spe, eval_images_per_epoch=eval_per_epoch,
                     final_eval_images=final)
    margin = budget.MARGIN_FRACTION * budget_s + budget.MARGIN_S
    assert cost(n, probe, spe, eval_per_epoch, final, elapsed) <= budget_s - margin
    assert cost(n + 1, probe, spe, eval_per_epoch, final, elapsed) > budget_s - margin - 1e-9  # (rounding)
    assert cost(n, probe, spe, eval_per_epoch, final, elapsed) > 0.9 * (budget_s - margin)  # uses the budget


def test_per_epoch_evaluation_is_counted():
    probe = Probe(step_s=0.1, eval_image_s=0.01)  # evaluating 1000 images costs 100 steps
    kw = dict(steps_per_epoch=100, final_eval_images=0)
    without = choose_steps(600, 0, probe, eval_images_per_epoch=0, **kw)
    with_val = choose_steps(600, 0, probe, eval_images_per_epoch=1000, **kw)
    assert with_val < without
    # one epoch of training costs as much as its evaluation: about half the steps
    assert with_val == pytest.approx(without / 2, abs=100)


def test_checkpoints_are_counted():
    """Each epoch end writes a checkpoint, and so does every train.checkpoint_every-th step: with
    tiny epochs (a small dataset) those writes are a large share of the time."""
    kw = dict(steps_per_epoch=10, eval_images_per_epoch=0, final_eval_images=0)
    free = choose_steps(600, 0, Probe(step_s=0.1, eval_image_s=0.0), **kw)
    probe = Probe(step_s=0.1, eval_image_s=0.0, checkpoint_s=1.0)  # a checkpoint = one epoch of steps
    at_epoch_ends = choose_steps(600, 0, probe, **kw)
    assert at_epoch_ends == pytest.approx(free / 2, abs=10)
    also_every_5 = choose_steps(600, 0, probe, checkpoint_every=5, **kw)
    assert also_every_5 == pytest.approx(free / 4, abs=10)
    margin = budget.MARGIN_FRACTION * 600 + budget.MARGIN_S
    assert also_every_5 * 0.1 + math.ceil(also_every_5 / 10) * 1.0 + also_every_5 // 5 * 1.0 <= 600 - margin


def test_final_evaluation_and_start_up_are_counted():
    probe = Probe(step_s=1.0, eval_image_s=0.01)
    kw = dict(steps_per_epoch=10, eval_images_per_epoch=0)
    base = choose_steps(600, 0, probe, final_eval_images=0, **kw)
    assert choose_steps(600, 0, probe, final_eval_images=10000, **kw) == pytest.approx(base - 100, abs=1)
    assert choose_steps(600, 100, probe, final_eval_images=0, **kw) == pytest.approx(base - 100, abs=1)


def test_too_short_a_budget_is_one_line_naming_the_minimum():
    probe = Probe(step_s=2.0, eval_image_s=0.01)
    kw = dict(steps_per_epoch=100, eval_images_per_epoch=1000, final_eval_images=1000)
    with pytest.raises(UserError) as e:
        choose_steps(60, 40, probe, **kw)
    message = str(e.value)
    assert "\n" not in message and "train.time_budget" in message and "too short" in message
    minimum = int(message.split("--budget ")[1].split("m")[0])
    assert minimum * 60 >= 40 + 10 + 200 + 10  # start-up, final eval, one epoch and its evaluation
    assert choose_steps(minimum * 60, 40, probe, **kw) >= 1  # control: the minimum it names is enough


@pytest.mark.parametrize("elapsed", [53.9, 3000.0, 54.0])
def test_the_minimum_named_is_always_accepted(elapsed):
    """The suggested budget must pass the same test that refused the first one, margins included."""
    probe = Probe(step_s=1.0, eval_image_s=0.0)
    kw = dict(steps_per_epoch=1, eval_images_per_epoch=0, final_eval_images=0)
    with pytest.raises(UserError) as e:
        choose_steps(1, elapsed, probe, **kw)
    minimum = int(str(e.value).split("--budget ")[1].split("m")[0])
    assert choose_steps(minimum * 60, elapsed, probe, **kw) >= 1


# -- budgeted runs ----------------------------------------------------------------------------------

SPE = 12  # 96 train images / batch 8
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", "train.epochs=200", "train.batch_size=8", "data.val_size=16",
        "optim.schedule=onecycle", "optim.warmup_epochs=10", "optim.lr=0.05", "accel.precision=fp32",
        "accel.channels_last=false", "accel.compile=false", "log.every_steps=4", "train.eval_batch_size=32"]
STEP_S = 2.0  # what the fake probe says a step costs: a 60 s budget then buys ~25 steps


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    return write_image_folder(root / "data", 112, 32, 8, classes=3), root / "cache"


def fake_probe(monkeypatch) -> list[int]:
    """The real probe (real steps on the run's model, then restored) timed by a fake clock:
    STEP_S per training step, 1 ms per evaluated image. Returns a list counting the probes."""
    calls = []
    real = budget.measure

    def measure(train_step, eval_batch, clock=None, **kw):
        calls.append(1)
        now = [0.0]

        def step():
            train_step()
            now[0] += STEP_S

        def batch():
            n = eval_batch()
            now[0] += 0.001 * n
            return n

        return real(step, batch, clock=lambda: now[0], **kw)

    monkeypatch.setattr(budget, "measure", measure)
    return calls


def budget_config(data, *extra: str):
    folder, cache = data
    return load_config(overrides=[*ARGS, f"data.path={folder}", f"data.cache_dir={cache}", *extra])


def test_budgeted_run_records_its_choice_resumes_without_deciding_and_replays_exactly(data, tmp_path, monkeypatch):
    cfg = budget_config(data, "train.time_budget=60")
    run = tmp_path / "budgeted"
    probes = fake_probe(monkeypatch)
    with monkeypatch.context() as m:
        stop_at(m, 14)
        with pytest.raises(preempt.Preempted):
            fit(cfg, run, quiet=True)
    assert probes == [1]
    steps = load_config(config_file=run / "config.yaml").train.steps
    assert 14 < steps <= 60 / STEP_S  # recorded before the first step; a short run of a 200-epoch recipe
    start = records(run, "start")[0]
    assert start["total_steps"] == steps and start["time_budget_s"] == 60

    def decide_again(*a, **k):
        raise AssertionError("a resumed budgeted run must not probe or decide again")

    monkeypatch.setattr(budget, "measure", decide_again)
    resumed = fit(load_config(config_file=run / "config.yaml"), run, resume=True, quiet=True)
    assert resumed_from(run) == 14
    summary = json.loads((run / "summary.json").read_text())
    assert summary["time_budget_s"] == 60 and summary["budget_steps"] == steps == summary["steps"]
    assert summary["wall_time_s"] > 0 and resumed["steps"] == steps
    epochs = records(run, "epoch")
    assert epochs[-1]["step"] == steps  # may end mid-epoch; the schedule ends there
    assert epochs[-1]["lr"] <= 0.05 / (steps - 2)  # onecycle: the last step is one decay step from 0

    # A replay of the config with train.steps fixed and no budget: the same weights bit for bit
    # (the probe's steps were undone: weights, BN statistics and momentum).
    replay = tmp_path / "replay"
    fit(budget_config(data, f"train.steps={steps}"), replay, quiet=True)
    assert differing(run, replay) == []


def test_control_a_probe_that_did_not_restore_would_change_the_run(data, tmp_path, monkeypatch):
    cfg = budget_config(data, "train.time_budget=60")
    fake_probe(monkeypatch)
    monkeypatch.setattr(torch.optim.Optimizer, "load_state_dict", lambda self, state: None)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, state, *a, **k: None)
    fit(cfg, tmp_path / "unrestored", quiet=True)
    monkeypatch.undo()
    steps = load_config(config_file=tmp_path / "unrestored" / "config.yaml").train.steps
    fit(budget_config(data, f"train.steps={steps}"), tmp_path / "replay", quiet=True)
    assert differing(tmp_path / "unrestored", tmp_path / "replay")


def test_the_probe_times_evaluation_as_the_run_evaluates_flip_tta_included(data, tmp_path, monkeypatch):
    """train.eval_tta doubles every evaluation: the probe's evaluation batches must run both views,
    or the budget would under-count evaluation and overrun. Control: without it, one view."""
    real = budget.measure
    views: list[float] = []  # images through the classifier per image evaluated, each probe batch
    seen: list[int] = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.append(len(inputs[0]))

    def measure(train_step, eval_batch, clock=None, **kw):
        def batch():
            seen.clear()
            n = eval_batch()
            views.append(sum(seen) / n)
            return n

        return real(train_step, batch, **kw)

    monkeypatch.setattr(budget, "measure", measure)
    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        for tta, expected in ((True, 2.0), (False, 1.0)):
            views.clear()
            cfg = budget_config(data, "train.time_budget=60", f"train.eval_tta={str(tta).lower()}")
            monkeypatch.setattr(budget, "choose_steps", lambda *a, **k: 2)  # the choice is tested above
            fit(cfg, tmp_path / f"tta-{tta}", quiet=True)
            assert views and set(views) == {expected}
    finally:
        hook.remove()


def test_a_real_20s_budget_ends_within_it(data, tmp_path, capsys):
    """Behaviour, not a benchmark: the real probe and clock choose the steps, and the run (start-up
    and final evaluation included) ends near its budget, far below the 200 epochs it asked for."""
    # 12 steps per epoch: dozens of epochs, each with its evaluation and checkpoint (timed by the probe)
    folder, cache = data
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--data", str(folder), "--out", str(out), "--budget", "20s", *ARGS,
                 f"data.cache_dir={cache}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time_budget_s"] == 20 and summary["budget_steps"] == summary["steps"] >= 1
    assert SPE < summary["steps"] < 200 * SPE
    assert summary["wall_time_s"] <= 20 + 20  # generous: the probe times a moment of a busy shared machine
    assert load_config(config_file=out / "config.yaml").train.steps == summary["steps"]
    estimate = records(out, "estimate")
    assert len(estimate) == 1 and estimate[0]["wall_s"] == 20


def test_every_run_logs_its_estimated_wall_time(data, tmp_path):
    out = tmp_path / "run"
    fit(budget_config(data, "train.epochs=2", "optim.warmup_epochs=0"), out, quiet=True)
    estimate = records(out, "estimate")
    assert len(estimate) == 1 and estimate[0]["wall_s"] > 0 and estimate[0]["step_s"] > 0
    long = budget.estimate_line(2 * 86400)  # more than a day: says what to do
    assert long.endswith("or train on a GPU") and "--budget" in long
    assert "--budget" not in budget.estimate_line(3600)


def test_a_run_killed_inside_the_probe_can_be_resumed(data, tmp_path, monkeypatch):
    """SIGKILL while the budget is being measured (compile warm-up can take a minute): the run
    directory already holds config.yaml, so --resume starts it over and decides then."""
    from test_faults import fork_wrn, wait  # the forked `wrn` runner

    folder, cache = data
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # the child inherits the patch
        m.setattr(budget, "measure", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
        pid = fork_wrn(["train", "--quiet", "--data", str(folder), "--out", str(run), "--budget", "60s", *ARGS,
                        f"data.cache_dir={cache}"], tmp_path / "log")
    assert wait(pid) == -signal.SIGKILL
    assert (run / "config.yaml").is_file() and not (run / checkpoint.CHECKPOINT).exists()
    fake_probe(monkeypatch)
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


def test_a_budgeted_run_that_narrows_records_its_model_and_replays_exactly(data, tmp_path, monkeypatch):
    """WRN-10-2 would get ~2 epochs of the 60 s, fewer than asked: the run trains WRN-10-1 instead,
    probed again, and config.yaml says so; replaying that config.yaml gives the same weights."""
    cfg = budget_config(data, "train.time_budget=60", "model.name=wrn-10-2", "train.budget_min_epochs=50")
    run = tmp_path / "narrowed"
    probes = fake_probe(monkeypatch)
    summary = fit(cfg, run, quiet=True)
    assert probes == [1, 1]  # the configured model, then the one trained
    recorded = load_config(config_file=run / "config.yaml")
    assert recorded.model.name == summary["model"] == "wrn-10-1" and summary["configured_model"] == "wrn-10-2"
    assert recorded.train.steps == summary["steps"] and records(run, "budget_model")[0]["configured"] == "wrn-10-2"
    assert summary["params"] == sum(p.numel() for p in create_model("wrn-10-1", num_classes=3).parameters())
    fit(recorded, tmp_path / "replay", quiet=True)  # train.steps is set: no probe, no decision
    assert differing(run, tmp_path / "replay") == []
    # Control: asking for no minimum keeps WRN-10-2, one probe.
    probes.clear()
    kept = fit(budget_config(data, "train.time_budget=60", "model.name=wrn-10-2"), tmp_path / "kept", quiet=True)
    assert probes == [1] and kept["model"] == "wrn-10-2" and kept["configured_model"] is None


@pytest.mark.parametrize("keep_memory", [True, False])
def test_the_probe_times_steps_with_the_memory_setting_training_uses(data, tmp_path, monkeypatch, keep_memory):
    """accel.keep_memory makes a CPU step 11-15% faster: set only after the probe, the probe timed
    slower steps than training took and budgets went unused. Control: off, it is never set."""
    events = []
    fake_probe(monkeypatch)
    real_measure = budget.measure  # the fake-clock probe: ~25 steps
    monkeypatch.setattr(accel, "keep_freed_memory", lambda device: events.append("keep") or True)
    monkeypatch.setattr(budget, "measure", lambda *a, **k: events.append("probe") or real_measure(*a, **k))
    fit(budget_config(data, "train.time_budget=60", f"accel.keep_memory={str(keep_memory).lower()}"),
        tmp_path / "run", quiet=True)
    assert events == (["keep", "probe"] if keep_memory else ["probe"])
