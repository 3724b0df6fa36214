"""`wrn report`: tables and plots from fixture run directories (no training here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from wrn.cli import main
from wrn.experiments import paper, report, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Fixture errors (%) per block-types row, ordered (ties included) like the paper's, so tau = 1.
FIXTURE_ERRORS = {"B(1,3,1)": 16.0, "B(3,1)": 13.0, "B(1,3)": 18.0, "B(3,1,1)": 15.0,
                  "B(3,3)": 12.0, "B(3,1,3)": 13.0}


def write_run(run_dir: Path, *, model: str, test_error: float, epochs: int = 3,
              finished: bool = True, params: int = 1_000_000) -> None:
    """A run directory as `engine.fit` leaves it: config.yaml, log.jsonl, summary.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model:\n  name: {model}\ntrain:\n  epochs: {epochs}\n")
    lines = []
    for e in range(epochs):  # the engine counts epochs from 0
        lr = 0.1 * 0.2 ** e  # a drop after every epoch
        acc = 1 - test_error / 100 - 0.1 * (epochs - 1 - e)
        lines.append({"kind": "step", "epoch": e, "step": e * 10 + 5, "loss": 1.0, "lr": lr,
                      "img_per_s": 100.0, "elapsed_s": e * 10.0})
        lines.append({"kind": "epoch", "epoch": e, "step": e * 10, "lr": lr, "train_loss": 1.0,
                      "train_acc": acc + 0.05, "val_loss": 1.0, "val_acc": acc - 0.01, "test_acc": acc,
                      "epoch_time_s": 10.0, "img_per_s": 100.0, "elapsed_s": e * 10.0})
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    if not finished:
        text += '{"kind": "epoch", "epo'  # a line cut short by a crash
    (run_dir / "log.jsonl").write_text(text)
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({
            "model": model, "model_args": {"name": model}, "dataset": "cifar10", "params": params,
            "epochs": epochs, "test_acc": 1 - test_error / 100, "test_loss": 0.5, "val_acc": 0.8,
            "train_acc": 0.9, "wall_time_s": 10.0 * epochs, "epoch_time_s": 10.0, "img_per_s": 100.0,
            "git_commit": "abc", "finished": True}))


def hide_matplotlib(monkeypatch) -> None:
    """As if matplotlib were not installed: importing it raises ImportError."""
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)


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
    for run in table.runs:
        for seed, extra in ((0, 0.0), (1, 2.0)):
            write_run(budget_dir / f"{run.id}-seed{seed}", model=run.model,
                      test_error=FIXTURE_ERRORS[run.label] + extra)
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
    assert report.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    # One swapped pair out of six: tau = (5 - 1) / 6, rho = 1 - 6 * 2 / (4 * 15).
    assert report.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert report.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert report.kendall_tau([1, 1], [1, 1]) is None  # undefined, not a crash


def test_plots_are_written_and_embedded(block_types_runs, tmp_path):
    pytest.importorskip("matplotlib")
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


def test_without_matplotlib_the_tables_still_come_with_a_clear_note(block_types_runs, tmp_path, monkeypatch):
    hide_matplotlib(monkeypatch)
    text = report.write_report(block_types_runs, tmp_path / "out").read_text()
    assert "matplotlib is not installed" in text and 'pip install -e ".[plot]"' in text
    assert "| B(3,3) |" in text


def test_cli_report(block_types_runs, tmp_path, capsys):
    assert main(["report", str(block_types_runs), "--out", str(tmp_path / "o"), "--no-plots",
                 "--timing-note", "shared 2-core CPU"]) == 0
    assert "time/epoch s (shared 2-core CPU)" in (tmp_path / "o" / "REPORT.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no sweep runs under" in capsys.readouterr().err


def test_speed_table_shows_times_relative_to_the_reference_net(tmp_path):
    root = tmp_path / "runs" / "speed" / "reduced-e1"
    wrn, thin = paper.get_table("speed").runs
    write_run(root / f"{wrn.id}-seed0", model=wrn.model, test_error=30.0, epochs=1)
    write_run(root / f"{thin.id}-seed0", model=thin.model, test_error=35.0, epochs=1)
    summary = json.loads((root / f"{thin.id}-seed0" / "summary.json").read_text())
    summary["epoch_time_s"] = 45.0  # 4.5x the WRN's 10 s
    (root / f"{thin.id}-seed0" / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(tmp_path / "runs", plots=False).read_text()
    assert "| 45.0 (x4.5) | x8 (relative) |" in text and "| 10.0 (x1.0) | x1 (relative) |" in text
