"""`wrn report`: tables and plots from fixture run directories (no training here)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

from wrn.cli import main
from wrn.experiments import paper, records, report, stats, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Fixture errors (%) per block-types row, ordered (ties included) like the paper's, so tau = 1.
FIXTURE_ERRORS = {"B(1,3,1)": 16.0, "B(3,1)": 13.0, "B(1,3)": 18.0, "B(3,1,1)": 15.0,
                  "B(3,3)": 12.0, "B(3,1,3)": 13.0}


def write_run(run_dir: Path, *, model: str, test_error: float, epochs: int = 3,
              finished: bool = True, params: int = 1_000_000, epoch_time: float = 10.0,
              paused: float = 0.0, windows: bool = True, test_images: int | None = None) -> None:
    """A run directory as `engine.fit` leaves it: config.yaml, log.jsonl, summary.json.

    Each epoch trains 1,000 images in ``epoch_time`` seconds, logged as three windows of steps;
    ``paused`` seconds (a suspended job) fall into the first epoch's second window."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model:\n  name: {model}\ntrain:\n  epochs: {epochs}\n")
    lines, times = [], []
    for e in range(epochs):  # the engine counts epochs from 0
        lr = 0.1 * 0.2 ** e  # a drop after every epoch
        acc = 1 - test_error / 100 - 0.1 * (epochs - 1 - e)
        pause = paused if e == 0 else 0.0
        times.append(epoch_time + pause)
        for w in range(3 if windows else 0):
            window_s = epoch_time / 3 + (pause if w == 1 else 0.0)
            lines.append({"kind": "step", "epoch": e, "step": e * 30 + 10 * (w + 1), "loss": 1.0, "lr": lr,
                          "img_per_s": 1000 / 3 / window_s, "elapsed_s": e * epoch_time})
        lines.append({"kind": "epoch", "epoch": e, "step": e * 30, "lr": lr, "train_loss": 1.0,
                      "train_acc": acc + 0.05, "val_loss": 1.0, "val_acc": acc - 0.01, "test_acc": acc,
                      "epoch_time_s": times[-1], "img_per_s": 1000 / times[-1], "elapsed_s": sum(times)})
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    if not finished:
        text += '{"kind": "epoch", "epo'  # a line cut short by a crash
    (run_dir / "log.jsonl").write_text(text)
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({
            "model": model, "model_args": {"name": model}, "dataset": "cifar10", "params": params,
            "epochs": epochs, "test_acc": 1 - test_error / 100, "test_loss": 0.5, "val_acc": 0.8,
            "train_acc": 0.9, "wall_time_s": sum(times), "epoch_time_s": sum(times) / epochs,
            "img_per_s": 1000 * epochs / sum(times), "git_commit": "abc", "finished": True,
            **({"test_images": test_images} if test_images else {})}))


def table_rows(text: str, prefix: str) -> dict[str, list[str]]:
    """The cells of the main table's rows (not the effect-size rows, which read "A -> B")."""
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith(prefix) and "->" not in line}


@pytest.fixture
def block_types_runs(tmp_path) -> Path:
    """Two seeds of every block-types net at a reduced budget (seed 1 is 2 points worse), plus
    an unfinished third seed of B(3,3)."""
    root = tmp_path / "runs"
    table = paper.get_table("block-types")
    budget_dir = root / "block-types" / "reduced-e3-k0.5"
    for i, run in enumerate(table.runs):
        for seed, extra in ((0, 0.0), (1, 2.0)):
            write_run(budget_dir / f"{run.id}-seed{seed}", model=run.model,
                      test_error=FIXTURE_ERRORS[run.label] + extra, params=1_000_000 + 100_000 * i)
    write_run(budget_dir / f"{table.runs[4].id}-seed2", model="wrn-28-1", test_error=50, finished=False)
    return root


def test_report_tables_set_our_medians_beside_the_papers(block_types_runs, tmp_path):
    path = report.write_report(block_types_runs, tmp_path / "out", plots=False)
    text = path.read_text()
    assert "REDUCED budget" in text and "reduced-e3-k0.5" in text
    rows = table_rows(text, "| B(")
    assert set(rows) == set(FIXTURE_ERRORS)
    b131 = rows["B(1,3,1)"]
    assert b131[3] == "17.00" and b131[4] == "16.00-18.00"  # median and spread of 16, 18
    assert b131[6] == "6.06" and b131[9] == "1.000M" and b131[10] == "1.4M"
    assert rows["B(3,3)"][2] == "2/3"  # the unfinished seed is counted, not averaged
    assert rows["B(3,3)"][7] == "1" and rows["B(3,3)"][8] == "1"  # best in both
    assert "Kendall tau = +1.00" in text and "Spearman rho = +1.00" in text
    assert "Not finished" in text and "seed2" in text


def test_runs_are_recognised_by_their_manifest(tmp_path):
    table = paper.get_table("deepening")
    budget = sweep.Budget(epochs=2)
    planned = sweep.plan(table, out=tmp_path / "elsewhere", budget=budget, count=False)
    sweep.write_manifest(table, planned, budget, ["wrn", "sweep", "deepening", "--epochs", "2"])
    for p, err in zip(planned, (20.0, 10.0, 11.0, 12.0)):  # the paper's order: l=2 < 3 < 4 < 1
        write_run(p.run_dir, model=p.model, test_error=err, epochs=2)
    text = report.write_report(tmp_path / "elsewhere", plots=False).read_text()
    assert "2 epochs (lr milestones scaled)" in text  # the manifest's budget description
    assert "l=2 B(3,3)" in text and "Kendall tau = +1.00" in text
    assert "Command: `wrn sweep deepening --epochs 2`" in text


def test_rank_correlations():
    assert stats.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    # One swapped pair out of six: tau = (5 - 1) / 6, rho = 1 - 6 * 2 / (4 * 15).
    assert stats.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert stats.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert stats.kendall_tau([1, 1], [1, 1]) is None  # undefined, not a crash


def test_plots_are_written_and_embedded(block_types_runs, tmp_path):
    out = tmp_path / "out"
    text = report.write_report(block_types_runs, out).read_text()
    pngs = sorted((out / "plots").glob("*.png"))
    kinds = {p.stem.rsplit("_", 1)[1] for p in pngs}
    assert kinds == {"vs-paper", "curves", "error-vs-params", "error-vs-time"}
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png
        assert f"](plots/{png.name})" in text
    assert len(list((out / "plots").iterdir())) == len(pngs)  # no temp files left behind
    # One network trained differently (the levers) has no params axis to plot against.
    write_table(tmp_path / "levers", "levers", {"paper recipe": 20.0, "+cutout 16": 22.0})
    report.write_report(tmp_path / "levers", tmp_path / "levers-out")
    assert {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "levers-out" / "plots").glob("*.png")} == kinds - {"error-vs-params"}


def test_cli_report(block_types_runs, tmp_path, capsys):
    assert main(["report", str(block_types_runs), "--out", str(tmp_path / "o"), "--no-plots",
                 "--timing-note", "shared 2-core CPU"]) == 0
    assert "time/epoch s (shared 2-core CPU)" in (tmp_path / "o" / "REPORT.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no sweep runs under" in capsys.readouterr().err


def test_a_report_adds_to_the_one_already_in_out(block_types_runs, tmp_path):
    """Tables trained in different places meet in one report: a second `wrn report` into the same
    --out keeps the sections and CSV of the tables it has no runs for, and replaces its own."""
    out = tmp_path / "out"
    depth = tmp_path / "depth-runs" / "depth" / "reduced-e3-k0.5"
    for run in paper.get_table("depth").runs:
        write_run(depth / f"{run.id}-seed0", model=run.model, test_error=20.0)
    alone = report.write_report(tmp_path / "depth-runs", tmp_path / "alone", plots=False).read_text()
    assert "Block types" not in alone  # control: a fresh --out holds only its own runs' tables
    report.write_report(block_types_runs, out, plots=False)
    report.write_report(tmp_path / "depth-runs", out, plots=False)
    text = report.write_report(block_types_runs, out, plots=False).read_text()  # again: replaced
    assert text.count("## Block types") == 1 and text.count("## Depth") == 1
    assert set(table_rows(text, "| B(")) == set(FIXTURE_ERRORS)
    assert f"Runs under `{tmp_path / 'depth-runs'}`" in text and f"Runs under `{block_types_runs}`" in text
    assert (out / "depth.csv").exists() and (out / "block-types.csv").exists()
    block_types = report.write_report(block_types_runs, tmp_path / "alone", plots=False).read_text()
    assert block_types.count("## Depth") == 1  # the other order: depth kept under block types


def test_a_tables_csv_keeps_the_rows_of_other_budgets(block_types_runs, tmp_path):
    out = tmp_path / "out"
    other = tmp_path / "e2" / "block-types" / "reduced-e2"
    for run in paper.get_table("block-types").runs:
        write_run(other / f"{run.id}-seed0", model=run.model, test_error=30.0, epochs=2)
    report.write_report(block_types_runs, out, plots=False)
    report.write_report(tmp_path / "e2", out, plots=False)
    report.write_report(block_types_runs, out, plots=False)  # its own rows replaced, not repeated
    with open(out / "block-types.csv", newline="") as f:
        budgets = [row["budget"] for row in csv.DictReader(f)]
    n = len(FIXTURE_ERRORS)
    assert budgets.count("reduced-e3-k0.5") == 2 * n and budgets.count("reduced-e2") == n


def test_speed_table_shows_times_relative_to_the_reference_net(tmp_path):
    root = tmp_path / "runs" / "speed" / "reduced-e1"
    wrn, thin = paper.get_table("speed").runs
    write_run(root / f"{wrn.id}-seed0", model=wrn.model, test_error=30.0, epochs=1)
    write_run(root / f"{thin.id}-seed0", model=thin.model, test_error=35.0, epochs=1, epoch_time=45.0)  # 4.5x
    text = report.write_report(tmp_path / "runs", plots=False).read_text()
    assert "| 45.0 (x4.5) | x8 (relative) |" in text and "| 10.0 (x1.0) | x1 (relative) |" in text


@pytest.mark.parametrize("windows, expected", [(True, 10.0), (False, 10.0 + 600 / 3)])
def test_time_per_epoch_leaves_out_a_pause(tmp_path, windows, expected):
    """A run suspended for 10 minutes in one epoch keeps its 10 s epochs: the time comes from the
    typical logged window. Control: a log without windows can only give the mean over epochs."""
    run = paper.get_table("speed").runs[0]
    write_run(tmp_path / "runs" / "speed" / "reduced-e3" / f"{run.id}-seed0", model=run.model,
              test_error=30.0, paused=600.0, windows=windows)
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    assert section.rows[0].epoch_time == pytest.approx(expected)
    report.write_report(tmp_path / "runs", plots=False)
    with open(tmp_path / "runs" / "speed.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["epoch_time_s"]) == pytest.approx(expected)


def test_per_table_csv_has_one_row_per_finished_run(block_types_runs, tmp_path):
    out = tmp_path / "out"
    text = report.write_report(block_types_runs, out, plots=False).read_text()
    with open(out / "block-types.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"net", "seed", "params", "epochs", "test_error", "budget"} <= set(rows[0])
    assert len(rows) == 2 * len(FIXTURE_ERRORS)  # the unfinished third seed of B(3,3) is left out
    assert not any(r["run_dir"].endswith("seed2") for r in rows)
    b131 = [r for r in rows if r["net"] == "B(1,3,1)"]
    assert [(r["seed"], float(r["test_error"])) for r in b131] == [("0", 16.0), ("1", 18.0)]
    assert b131[0]["params"] == "1000000" and b131[0]["epochs"] == "3" and b131[0]["budget"] == "reduced-e3-k0.5"
    assert [r["net"] for r in rows[::2]] == [run.label for run in paper.get_table("block-types").runs]  # paper order
    assert "Per-run numbers: [block-types.csv](block-types.csv)" in text


def write_table(root: Path, name: str, errors: dict[str, float], epoch_times: dict[str, float] | None = None) -> None:
    """Seed-0 runs of table ``name`` (only its CIFAR-10 rows), errors and epoch times by row label."""
    for run in paper.get_table(name).runs:
        if run.dataset == "cifar10" and run.label in errors:
            write_run(root / name / "reduced-e3" / f"{run.id}-seed0", model=run.model, test_error=errors[run.label],
                      epoch_time=(epoch_times or {}).get(run.label, 10.0))


@pytest.mark.parametrize("errors, verdicts", [
    ((20.0, 15.0, 12.0), ["same direction", "same direction"]),  # the paper: wider is better
    ((12.0, 15.0, 20.0), ["opposite", "opposite"]),  # control: the reverse trend is called out
    ((15.0, 15.2, 12.0), ["within noise", "same direction"]),  # 0.2 points on 10,000 images is noise
])
def test_effect_sizes_set_our_differences_beside_the_papers(tmp_path, errors, verdicts):
    write_table(tmp_path / "runs", "width", dict(zip(("WRN-40-1", "WRN-40-2", "WRN-40-4"), errors)))
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    found = stats.effects(section)
    assert [(e["from"], e["to"]) for e in found] == [("WRN-40-1", "WRN-40-2"), ("WRN-40-2", "WRN-40-4")]
    assert found[0]["ours"] == pytest.approx(errors[1] - errors[0])
    assert found[0]["paper"] == pytest.approx(5.33 - 6.85)
    assert [e["verdict"] for e in found] == verdicts
    text = report.write_report(tmp_path / "runs", plots=False).read_text()
    assert f"| WRN-40-1 -> WRN-40-2 | {errors[1] - errors[0]:+.2f} |" in text and "| -1.52 |" in text


@pytest.mark.parametrize("spread, verdict, significant", [
    (3.0, "within noise", False),  # seeds 3 points apart: a 2-point gap is noise
    (0.1, "same direction", True),  # control: the same medians from seeds that agree
])
def test_with_seeds_the_noise_counts_their_spread(tmp_path, spread, verdict, significant):
    for label, median in (("WRN-40-1", 20.0), ("WRN-40-2", 18.0)):
        run = next(r for r in paper.get_table("width").runs if r.label == label and r.dataset == "cifar10")
        for seed, error in enumerate((median, median + spread, median - spread)):
            write_run(tmp_path / "runs" / "width" / "reduced-e3" / f"{run.id}-seed{seed}", model=run.model,
                      test_error=error)
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    (found,) = stats.effects(section)
    assert found["ours"] == pytest.approx(-2.0)
    a, b = section.rows
    test_set_noise = 2 * math.hypot(stats.standard_error(20.0, a, "cifar10"), stats.standard_error(18.0, b, "cifar10"))
    assert test_set_noise < 2.0  # the test set alone would call the gap real
    assert found["noise"] == pytest.approx(max(test_set_noise, 2 * math.sqrt(2 * spread ** 2 / 3)))
    assert found["verdict"] == verdict
    assert (found["p"] < 0.01) == significant
    text = report.write_report(tmp_path / "runs", plots=False).read_text()
    assert f"| WRN-40-1 -> WRN-40-2 | -2.00 | {found['noise']:.2f} | {found['p']:.2f} | -1.52 | {verdict} |" in text


def test_the_standard_error_counts_the_images_each_run_evaluated(tmp_path):
    """A run evaluated on 200 test images has sqrt(10000/200) ~ 7x the noise of one on CIFAR-10's
    10,000 (the summary says how many it evaluated). Control: a summary that does not say falls
    back to the dataset's test split."""
    for label, error in (("WRN-40-1", 20.0), ("WRN-40-2", 18.0)):
        run = next(r for r in paper.get_table("width").runs if r.label == label and r.dataset == "cifar10")
        write_run(tmp_path / "small" / "width" / "reduced-e3" / f"{run.id}-seed0", model=run.model,
                  test_error=error, test_images=200)
        write_run(tmp_path / "full" / "width" / "reduced-e3" / f"{run.id}-seed0", model=run.model, test_error=error)
    (small,) = records.sections(records.collect(tmp_path / "small"))
    (full,) = records.sections(records.collect(tmp_path / "full"))
    assert stats.standard_error(20.0, small.rows[0], "cifar10") == pytest.approx(100 * math.sqrt(0.2 * 0.8 / 200))
    assert stats.standard_error(20.0, full.rows[0], "cifar10") == pytest.approx(100 * math.sqrt(0.2 * 0.8 / 10000))
    assert stats.effects(small)[0]["verdict"] == "within noise" != stats.effects(full)[0]["verdict"]
    assert "test images per run `200`" in report.write_report(tmp_path / "small", plots=False).read_text()


def test_effects_of_one_seed_have_no_p_value(tmp_path):
    write_table(tmp_path / "runs", "width", {"WRN-40-1": 20.0, "WRN-40-2": 18.0})
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    (found,) = stats.effects(section)
    assert found["p"] is None and found["verdict"] == "same direction"


def test_dropout_effects_pair_each_net_with_itself_plus_dropout(tmp_path):
    write_table(tmp_path / "runs", "dropout", {"WRN-16-4": 20.0, "WRN-16-4 +dropout": 21.0,
                                               "WRN-52-1": 25.0, "WRN-52-1 +dropout": 24.0})
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    pairs = [(e["from"], e["to"]) for e in stats.effects(section)]
    assert pairs == [("WRN-16-4", "WRN-16-4 +dropout"), ("WRN-52-1", "WRN-52-1 +dropout")]


def test_thin_vs_wide_shows_the_measured_time_ratio_beside_the_papers_8x(tmp_path):
    write_table(tmp_path / "runs", "thin-vs-wide", {"WRN-40-4": 30.0, "pre-act ResNet-1001": 32.0, "WRN-16-8": 29.0},
                epoch_times={"WRN-40-4": 12.0, "pre-act ResNet-1001": 78.0})
    text = report.write_report(tmp_path / "runs", plots=False).read_text()
    assert "pre-act ResNet-1001 (trained as preact-resnet-1001) 78.0 s" in text
    assert "WRN-40-4 (trained as wrn-40-4) 12.0 s: **6.5x** (paper: ~8x, on its GPU)" in text
    assert stats.speed_pair() == ("wrn-40-4", "preact-resnet-1001", 8.0)


def test_time_ratio_needs_both_nets(tmp_path):
    write_table(tmp_path / "runs", "thin-vs-wide", {"WRN-40-4": 30.0, "WRN-16-8": 29.0})
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    assert stats.time_ratio(section) is None
    assert "Time per training epoch" not in report.write_report(tmp_path / "runs", plots=False).read_text()


def test_cli_report_on_one_run_writes_its_curves(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run(run_dir, model="wrn-10-1", test_error=20.0)
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {run_dir / 'curves.png'}" in capsys.readouterr().out


def test_cli_report_on_a_run_without_a_finished_epoch(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model:\n  name: wrn-10-1\n")
    (run_dir / "log.jsonl").write_text('{"kind": "start", "step": 0}\n{"kind": "ep')
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no finished epoch yet" in err and err.count("\n") == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "log.jsonl"]  # nothing left behind


def test_levers_compare_each_lever_with_the_papers_recipe(tmp_path):
    """Every lever is paired with the baseline row, not with its neighbour (control: the width
    table, without a baseline, pairs neighbours)."""
    errors = {"paper recipe": 20.0, "+cutout 16": 22.0, "+AutoAugment": 24.0, "+EMA 0.9999": 19.0}
    write_table(tmp_path / "runs", "levers", errors)
    (section,) = records.sections(records.collect(tmp_path / "runs"))
    found = stats.effects(section)
    assert [(e["from"], e["to"]) for e in found] == [("paper recipe", label) for label in list(errors)[1:]]
    assert [e["ours"] for e in found] == pytest.approx([2.0, 4.0, -1.0])
    assert found[0]["paper"] == pytest.approx(3.08 - 4.00) and found[2]["paper"] is None
    assert [e["verdict"] for e in found] == ["opposite", "opposite", "-"]
    # "trained as" names each lever with the value its run's config.yaml holds (a sweep scales EMA's).
    ema = next(p for p in (tmp_path / "runs").rglob("config.yaml") if "ema" in p.parent.name)
    ema.write_text(ema.read_text() + "  ema: 0.996667\n")
    text = report.write_report(tmp_path / "runs", plots=False).read_text()
    assert "| paper recipe -> +AutoAugment | +4.00 |" in text
    rows = table_rows(text, "| ")
    assert rows["+EMA 0.9999"][1] == "wrn-28-10 train.ema=0.996667" and rows["paper recipe"][1] == "wrn-28-10"
    assert rows["+cutout 16"][1] == "wrn-28-10 data.cutout=16"
    write_table(tmp_path / "width", "width", {"WRN-40-1": 20.0, "WRN-40-2": 18.0, "WRN-40-4": 17.0})
    (width,) = records.sections(records.collect(tmp_path / "width"))
    assert [(e["from"], e["to"]) for e in stats.effects(width)] == [("WRN-40-1", "WRN-40-2"), ("WRN-40-2", "WRN-40-4")]
