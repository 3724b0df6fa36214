"""`wrn sweep`: the paper's tables planned right, budget knobs applied and labelled, finished runs
skipped and interrupted ones resumed."""

from __future__ import annotations

import json

import pytest

from wrn.cli import main
from wrn.errors import UserError
from wrn.experiments import dryrun, launchers, paper, sweep
from wrn.train.config import load_config

from helpers import write_image_folder  # tests/helpers.py

# (label, model, params computed from the architecture, the paper's params: its table of block types).
BLOCK_TYPES = [
    ("B(1,3,1)", "wrn-40-2", "1.429M", "1.4M"),
    ("B(3,1)", "wrn-40-2", "1.211M", "1.2M"),
    ("B(1,3)", "wrn-40-2", "1.297M", "1.3M"),
    ("B(3,1,1)", "wrn-40-2", "1.343M", "1.3M"),
    ("B(3,3)", "wrn-28-2", "1.468M", "1.5M"),
    ("B(3,1,3)", "wrn-22-2", "1.145M", "1.1M"),
]


def test_block_types_dry_run_lists_six_nets_with_params_next_to_papers(tmp_path, capsys):
    assert main(["sweep", "block-types", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for label, model, ours, theirs in BLOCK_TYPES:
        row = next(line for line in lines if line.startswith(label + " "))
        cells = row.split()
        assert model in cells and ours in cells and theirs in cells, row
        assert cells.index(ours) + 1 == cells.index(theirs), "our params sit next to the paper's"
    assert "params  paper params" in out
    assert "FULL paper budget" in out
    assert "PFLOP" in out and "H100" in out  # the cost estimate
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


def test_deepening_keeps_40_layers_and_2_2m_params():
    planned = sweep.plan(paper.get_table("deepening"), out="runs")
    assert [p.run.model_kwargs["blocks_per_group"] for p in planned] == [12, 6, 4, 3]
    assert [len(p.run.model_kwargs["block"]) for p in planned] == [1, 2, 3, 4]
    assert [round(p.params / 1e6, 3) for p in planned] == [2.244] * 4


def test_every_table_plans_and_its_runs_build(tmp_path):
    for table in paper.tables().values():
        for i, dataset in enumerate(table.datasets()):
            # Each network is built (on the meta device) once, on the table's first dataset: on
            # the others only its classifier differs, and building pre-act ResNet-1001 takes ~10 s.
            planned = sweep.plan(table, out=tmp_path, dataset=dataset, count=i == 0)
            assert planned and all(p.params > 0 for p in planned if i == 0)
            # The overrides are valid config for the training engine.
            load_config(preset=planned[0].preset, overrides=planned[0].overrides)


def test_reduced_budget_is_applied_and_labelled(tmp_path, capsys):
    budget = sweep.Budget(epochs=4, subset=1000, model_scale=0.5)
    planned = sweep.plan(paper.get_table("block-types"), out=tmp_path, seeds=2, budget=budget,
                         data="/data/cifar10.tar.xz", overrides=("accel.precision=bf16",))
    assert len(planned) == 12
    p = planned[0]
    # bf16 changes what the runs compute: the label says so.
    assert p.run_dir == tmp_path / "block-types" / "reduced-e4-sub1000-k0.5-precisionbf16" / "c10_wrn-40-2_b1-3-1-seed0"
    assert p.model == "wrn-40-1" and p.params < 0.5e6  # k = 2 x 0.5
    cfg = load_config(preset=p.preset, overrides=p.overrides)
    assert cfg.model.name == "wrn-40-1" and cfg.model.block == (1, 3, 1)
    assert cfg.model.dropout == 0.0  # dropout only in the dropout table
    assert cfg.train.epochs == 4 and cfg.optim.milestones == (1, 2, 3)  # 60/120/160 of 200
    assert cfg.data.subset == 1000 and cfg.data.path == "/data/cifar10.tar.xz" and cfg.data.name == "cifar10"
    assert cfg.accel.precision == "bf16" and cfg.train.seed == 0
    assert load_config(preset=p.preset, overrides=planned[1].overrides).train.seed == 1
    assert p.train_images == 1000

    assert main(["sweep", "block-types", "--dry-run", "--out", str(tmp_path), "--epochs", "4",
                 "--subset", "1000", "--model-scale", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "REDUCED budget, not the paper's" in out and "reduced-e4-sub1000-k0.5" in out
    assert "lr drops at epochs 1, 2, 3 of 4" in out


def test_a_changed_lr_schedule_is_allowed_and_labelled(tmp_path, capsys):
    """optim.schedule=onecycle (a short-budget schedule) must not hide behind the step recipe's label."""
    table = paper.get_table("deepening")
    planned = sweep.plan(table, out=tmp_path, budget=sweep.Budget(epochs=3),
                         overrides=("optim.schedule=onecycle", "optim.warmup_epochs=0.5"))
    p = planned[0]
    assert p.run_dir.parent == tmp_path / "deepening" / "reduced-e3-onecycle-warmup_epochs0.5"
    cfg = load_config(preset=p.preset, overrides=p.overrides)
    assert cfg.optim.schedule == "onecycle" and cfg.train.epochs == 3 and p.milestones == []
    budget = sweep.Budget(epochs=3)  # what the CLI passes: the manifest records the planned budget
    manifest = json.loads(sweep.write_manifest(table, planned, budget, ["wrn"]).read_text())
    assert manifest["budget"]["label"] == "reduced-e3-onecycle-warmup_epochs0.5"
    assert manifest["budget"]["schedule"] == "onecycle" and manifest["budget"]["changes"] == ["optim.warmup_epochs=0.5"]
    assert "onecycle lr schedule instead of the recipe's" in manifest["budget"]["description"]
    # Without any other knob the run is still not the paper's budget.
    only = sweep.plan(table, out=tmp_path, overrides=("optim.schedule=cosine",))[0]
    assert only.budget.label == "reduced-cosine" and not only.budget.full
    # The recipe's own schedule named explicitly changes nothing.
    assert sweep.plan(table, out=tmp_path, overrides=("optim.schedule=step",))[0].budget.label == "full"

    assert main(["sweep", "deepening", "--dry-run", "--out", str(tmp_path), "--epochs", "3",
                 "optim.schedule=onecycle"]) == 0
    out = capsys.readouterr().out
    assert "reduced-e3-onecycle" in out and "lr drops" not in out


@pytest.mark.parametrize("epochs, expected", [(200, [60, 120, 160]), (10, [3, 6, 8]), (4, [1, 2, 3]),
                                               (3, [1, 2]), (1, [])])
def test_milestones_scale_with_epochs(epochs, expected):
    assert sweep.scale_milestones([60, 120, 160], 200, epochs) == expected


def test_model_scale_divides_width_only():
    assert sweep.scale_model("wrn-28-10", 0.5) == "wrn-28-5"
    assert sweep.scale_model("wrn-40-1", 0.5) == "wrn-40-1"  # never below k = 1
    assert sweep.scale_model("preact-resnet-1001", 0.5) == "preact-resnet-1001"


def test_a_scale_that_makes_two_nets_one_is_refused(tmp_path):
    """--model-scale 0.5 would train WRN-40-1 for both WRN-40-1 and WRN-40-2: a width "effect"
    that is seed noise. Control: full width, and a scale that keeps them apart (0.75: k = 1, 2, 3)."""
    width = paper.get_table("width")
    with pytest.raises(UserError, match="trains wrn-40-1 for each of wrn-40-1, wrn-40-2"):
        sweep.plan(width, out=tmp_path, budget=sweep.Budget(epochs=1, model_scale=0.5), count=False)
    for scale in (1.0, 0.75):
        models = [p.model for p in sweep.plan(width, out=tmp_path, budget=sweep.Budget(epochs=1, model_scale=scale),
                                             count=False)]
        assert len(set(models)) == len(models) == 3
    # Runs that differ by their arguments (block types, dropout) may share a scaled name.
    assert len(sweep.plan(paper.get_table("block-types"), out=tmp_path,
                          budget=sweep.Budget(epochs=1, model_scale=0.125), count=False)) == 6


def test_bad_input_is_one_line_with_the_fix(tmp_path, capsys):
    with pytest.raises(UserError, match="block-types"):
        paper.get_table("block-type")
    with pytest.raises(UserError, match="--epochs"):
        sweep.plan(paper.get_table("block-types"), out=tmp_path, overrides=("train.epochs=3",))
    with pytest.raises(UserError, match="fixes each run's model"):
        sweep.plan(paper.get_table("block-types"), out=tmp_path, overrides=("model.dropout=0.3",))
    with pytest.raises(UserError, match="--dataset"):
        sweep.plan(paper.get_table("depth-width"), out=tmp_path, data="/x.tar")
    assert main(["sweep", "nope", "--dry-run"]) == 2
    assert "unknown table 'nope'" in capsys.readouterr().err


def test_list_names_every_table(capsys):
    assert main(["sweep", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("block-types", "deepening", "depth-width", "dropout", "thin-vs-wide", "speed"):
        assert name in out


def _finish(p: sweep.PlannedRun, test_acc: float = 0.9) -> None:
    p.run_dir.mkdir(parents=True, exist_ok=True)
    (p.run_dir / "summary.json").write_text(json.dumps({"finished": True, "test_acc": test_acc}))


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path):
    planned = sweep.plan(paper.get_table("block-types"), out=tmp_path, budget=sweep.Budget(epochs=2),
                         count=False)
    _finish(planned[0])
    (planned[1].run_dir / "checkpoint").mkdir(parents=True)  # fit() was killed mid-run
    planned[3].run_dir.mkdir(parents=True)  # killed before its first checkpoint: starts over in place
    (planned[3].run_dir / "config.yaml").write_text("{}")
    (planned[4].run_dir / ".checkpoint.old").mkdir(parents=True)  # killed between the swap's two renames
    (planned[4].run_dir / "config.yaml").write_text("{}")
    # An unfinished summary (e.g. a crash after writing it) does not count as finished.
    planned[2].run_dir.mkdir(parents=True)
    (planned[2].run_dir / "summary.json").write_text(json.dumps({"finished": False}))

    calls = []

    def fake_runner(p):
        calls.append((p.name, p.status() == "resumable"))
        _finish(p)
        return 0

    local = launchers.LocalLauncher(runner=fake_runner)
    messages = []
    outcome = launchers.execute(planned, local, echo=messages.append)
    assert outcome["skipped"] == [planned[0].name]
    assert outcome["resumed"] == [planned[1].name, planned[3].name, planned[4].name]
    assert len(outcome["trained"]) == 2 and not outcome["failed"]
    assert [r for _, r in calls] == [True, False, True, True, False]
    assert "finished already, skipped" in messages[0]
    # What each resumed run will do, said as it starts: only planned[3] saved no checkpoint.
    assert f"{planned[1].name}: resuming from its checkpoint" in "\n".join(messages)
    assert f"{planned[3].name}: starting over in its run directory" in "\n".join(messages)
    assert f"{planned[4].name}: resuming from its checkpoint" in "\n".join(messages)

    calls.clear()
    outcome = launchers.execute(planned, local, echo=messages.append)
    assert calls == [] and len(outcome["skipped"]) == 6


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
    planned = sweep.plan(paper.get_table("deepening"), out=tmp_path, count=False)
    local = launchers.LocalLauncher(runner=lambda p: 1 if p is planned[0] else (_finish(p), 0)[1])
    outcome = launchers.execute(planned, local, echo=lambda m: None)
    assert outcome["failed"] == [planned[0].name] and len(outcome["trained"]) == 3


def test_manifest_says_what_each_run_directory_is(tmp_path):
    table = paper.get_table("block-types")
    budget = sweep.Budget(epochs=3)
    planned = sweep.plan(table, out=tmp_path, budget=budget, seeds=2)
    path = sweep.write_manifest(table, planned, budget, ["wrn", "sweep", "block-types", "--epochs", "3"])
    manifest = json.loads(path.read_text())
    assert manifest["table"] == "block-types" and manifest["budget"]["label"] == "reduced-e3"
    assert [r["dir"] for r in manifest["runs"]] == [p.name for p in planned]
    assert manifest["runs"][8]["params"] == 1_467_610  # B(3,3) seed 0, WRN-28-2


def test_a_tiny_real_sweep_trains_then_skips_then_resumes(tmp_path):
    """The path `wrn sweep` takes for real: `python -m wrn.cli train --preset P --out RUN_DIR ...`,
    and `wrn train --resume RUN_DIR` (no overrides: the run's config.yaml holds them)."""
    data = write_image_folder(tmp_path / "data", 40, 20, 32, classes=10)
    planned = sweep.plan(paper.get_table("block-types"), out=tmp_path / "runs", data=str(data),
                         budget=sweep.Budget(epochs=1, model_scale=0.5), count=False,
                         overrides=("data.val_size=0", "train.batch_size=20", "train.eval_batch_size=20",
                                    f"data.cache_dir={tmp_path / 'cache'}", "log.quiet=true"))[-1:]
    assert planned[0].model == "wrn-22-1"
    outcome = launchers.execute(planned, echo=lambda m: None)
    log = planned[0].run_dir.parent / "logs" / f"{planned[0].name}.txt"
    assert outcome["trained"] == [planned[0].name], log.read_text()
    summary = json.loads((planned[0].run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == "wrn-22-1" and summary["epochs"] == 1
    assert launchers.execute(planned, echo=lambda m: None)["skipped"] == [planned[0].name]
    # Killed before it wrote its summary: the sweep resumes it from the checkpoint.
    (planned[0].run_dir / "summary.json").unlink()
    assert launchers.execute(planned, echo=lambda m: None)["resumed"] == [planned[0].name]
    commands = [line for line in log.read_text().splitlines() if line.startswith("$ ")]
    assert commands[0].split()[4:8] == ["train", "--preset", "paper-cifar", "--out"]
    assert commands[-1].endswith(f"-m wrn.cli train --resume {planned[0].run_dir}")
    assert json.loads((planned[0].run_dir / "summary.json").read_text())["test_acc"] == summary["test_acc"]


def test_labels_name_every_override_that_changes_the_recipe(tmp_path):
    table = paper.get_table("deepening")
    planned = sweep.plan(table, out=tmp_path, budget=sweep.Budget(epochs=2), count=False,
                         overrides=("optim.lr=0.2", "optim.label_smoothing=0.1", "accel.precision=bf16",
                                    "accel.threads=1", "optim.weight_decay=5e-4"))
    label = planned[0].budget.label
    assert label == "reduced-e2-lr0.2-label_smoothing0.1-precisionbf16", label
    assert planned[0].run_dir.parent.name == label
    # Control: speed switches and the recipe's own values change nothing, so the full budget stays "full".
    same = sweep.plan(table, out=tmp_path, count=False, overrides=("accel.threads=1", "optim.weight_decay=5e-4"))
    assert same[0].budget.label == "full"


def _finish_at(p, img_per_s: float, *, windows: bool = True) -> None:
    """A finished run of ``p`` whose logged windows trained at ``img_per_s``, but for one window
    in which it was suspended (its summary's mean epoch time counts the pause)."""
    p.run_dir.mkdir(parents=True)
    epoch_s = p.train_images / img_per_s + 600.0  # 10 minutes suspended in every epoch
    log = []
    for e in range(p.epochs):
        log += [{"kind": "step", "epoch": e, "img_per_s": rate} for rate in (img_per_s,) * 4 + (0.5,)] if windows else []
        log.append({"kind": "epoch", "epoch": e, "epoch_time_s": epoch_s, "img_per_s": p.train_images / epoch_s})
    (p.run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (p.run_dir / "summary.json").write_text(json.dumps({"finished": True, "test_acc": 0.5, "epoch_time_s": epoch_s}))


def test_cpu_time_estimates_come_from_the_sweeps_own_finished_runs(tmp_path, capsys):
    planned = sweep.plan(paper.get_table("block-types"), out=tmp_path, budget=sweep.Budget(epochs=2, model_scale=0.125))
    assert dryrun.cpu_tflops(planned) == (sweep.DEFAULT_CPU_TFLOPS, "assumed: a 2-core AVX2 EPYC; --tflops to set")
    _finish_at(planned[0], 100.0)
    tflops, source = dryrun.cpu_tflops(planned)
    steady = planned[0].train_flops / (planned[0].train_images / 100.0 * planned[0].epochs) / 1e12
    assert tflops == pytest.approx(steady) and source == "as the 1 finished run here trained; --tflops to set"
    assert dryrun.cpu_tflops(planned, 0.5) == (0.5, "--tflops")  # the user's figure wins
    text = dryrun.format_plan(paper.get_table("block-types"), planned, planned[0].budget, tflops=tflops,
                             tflops_source=source)
    assert f"{tflops:.2g} TFLOP/s sustained on the CPU (as the 1 finished run here trained" in text
    assert "left: 5 runs not finished" in text


def test_control_without_logged_windows_the_pauses_count(tmp_path):
    planned = sweep.plan(paper.get_table("block-types"), out=tmp_path, budget=sweep.Budget(epochs=2, model_scale=0.125))
    _finish_at(planned[0], 100.0, windows=False)
    steady = planned[0].train_flops / (planned[0].train_images / 100.0 * planned[0].epochs) / 1e12
    assert dryrun.cpu_tflops(planned)[0] < 0.9 * steady


def test_depth_budget_trains_every_wrn_at_one_depth_and_says_so(tmp_path):
    assert sweep.scale_model("wrn-28-10", 0.1, 16) == "wrn-16-1"
    assert sweep.scale_model("wrn-28-10", 1.0, 16) == "wrn-16-10"
    assert sweep.scale_model("resnet-110", 0.5, 16) == "resnet-110"  # no WRN depth to change
    budget = sweep.Budget(epochs=6, model_scale=0.1, depth=16)
    assert budget.label == "reduced-e6-k0.1-d16" and "depth 16" in budget.describe()
    with pytest.raises(UserError, match="6N \\+ 4"):
        sweep.Budget(depth=17)
    # The depth table at one depth would train one net three times: refused, like a width.
    with pytest.raises(UserError, match="--depth 16 trains wrn-16-8 for each of"):
        sweep.plan(paper.get_table("depth"), out=tmp_path, budget=sweep.Budget(depth=16), count=False)


def test_levers_table_adds_each_lever_alone_to_the_papers_recipe(tmp_path):
    table = paper.get_table("levers")
    budget = sweep.Budget(epochs=6, model_scale=0.1, depth=16)
    planned = sweep.plan(table, out=tmp_path, budget=budget, seeds=2, overrides=("accel.precision=bf16",))
    assert len({p.run_dir for p in planned}) == len(planned) == 2 * len(paper.LEVERS)
    assert all(p.model == "wrn-16-1" and p.preset == "paper-cifar" for p in planned)
    configs = {p.run.label: load_config(preset=p.preset, overrides=p.overrides) for p in planned if p.seed == 0}
    base = configs["paper recipe"]
    assert base.model.dropout == 0 and base.data.val_size == 0 and base.train.epochs == 6
    assert (base.data.cutout, base.data.policy, base.train.ema, base.optim.sam_rho) == (0, "none", 0, 0)
    assert configs["+cutout 16"].data.cutout == 16
    assert configs["+AutoAugment"].data.policy == "autoaugment"
    ra = configs["+RandAugment N3 M15"].data
    assert (ra.policy, ra.policy_ops, ra.policy_magnitude) == ("randaugment", 3, 15)
    assert configs["+TrivialAugment"].data.policy == "trivialaugment"
    assert configs["+SAM rho 0.05"].optim.sam_rho == 0.05
    # EMA's horizon (10,000 steps of 200 epochs) keeps its fraction of 6 epochs: 300 steps.
    assert configs["+EMA 0.9999"].train.ema == pytest.approx(1 - 1 / 300, abs=1e-6)
    # Each row differs from the recipe by its lever alone (and every row by the budget).
    for label, cfg in configs.items():
        changed = {(section, key) for section, values in cfg.to_dict().items()
                   for key, value in values.items() if base.to_dict()[section][key] != value}
        assert len(changed) == (0 if label == "paper recipe" else 3 if "RandAugment" in label else 1), label
    # SAM's two passes a step double its cost estimate.
    sam = next(p for p in planned if p.run.label.startswith("+SAM"))
    assert sam.passes == 2 and sam.train_flops == 2 * planned[0].train_flops
    # Control: at the full budget EMA's decay is the recipe's own.
    full = sweep.plan(table, out=tmp_path, count=False)
    assert "train.ema=0.9999" in next(p for p in full if p.run.label.startswith("+EMA")).overrides
    assert sweep.scale_ema(0.0, 200, 6) == 0.0


def test_an_override_of_a_rows_lever_is_refused(tmp_path, capsys):
    """`wrn sweep levers data.cutout=8` would give every row cutout: the rows' labels would lie."""
    assert main(["sweep", "levers", "--dry-run", "--out", str(tmp_path), "data.cutout=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.cutout is what the rows of table levers change" in err
    # Control: a key no row changes is allowed (and labelled).
    assert main(["sweep", "levers", "--dry-run", "--out", str(tmp_path), "optim.lr=0.05"]) == 0
