"""Finished (and unfinished) runs read back from disk, grouped like the paper's tables.

The report and the plots both read runs through this module and never each other. A run
directory holds ``config.yaml``, ``log.jsonl`` and, once finished, ``summary.json``. Sweep runs
are recognised by ``sweep.json`` beside them, or without it by the path
``<table>/<budget>/<run id>-seed<n>``.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from wrn.errors import UserError
from wrn.rundir import LOG, SUMMARY, epoch_time, read_config, read_epochs, read_json
from wrn.experiments.paper import Run, Table, tables


@dataclass
class RunRecord:
    """One trained (or training) run directory of a sweep."""

    table: str
    budget: str  # "full" or "reduced-..."
    budget_description: str
    run: Run
    seed: int
    path: Path
    model: str  # the model actually trained (after --model-scale)
    summary: dict | None
    epochs: list[dict]
    command: list[str] | None = None  # the sweep command that made it (from sweep.json)
    step_rates: list[float] = field(default_factory=list)  # img/s of each logged window of steps

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished"))

    @property
    def test_error(self) -> float | None:
        """Final-epoch test error in %, never the best over epochs."""
        return 100 * (1 - self.summary["test_acc"]) if self.finished else None

    @property
    def epoch_time(self) -> float | None:
        """Seconds per training epoch at the run's typical speed (``epoch_time``)."""
        return epoch_time(self.summary, self.epochs, self.step_rates) if self.finished else None


@dataclass
class Row:
    """One network of a table: its seeds aggregated."""

    run: Run
    model: str
    records: list[RunRecord]

    @property
    def errors(self) -> list[float]:
        return [r.test_error for r in self.records if r.test_error is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.errors) if self.errors else None

    @property
    def test_images(self) -> int | None:
        """Test images each run evaluated (the fewest, if they differ); None for records from
        before summaries said (the dataset's test split is then assumed)."""
        counts = [r.summary["test_images"] for r in self.records if r.finished and r.summary.get("test_images")]
        return min(counts) if counts else None

    def _summary_median(self, key: str) -> float | None:
        values = [r.summary[key] for r in self.records if r.finished and r.summary.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def params(self) -> int | None:
        v = self._summary_median("params")
        return None if v is None else int(v)

    @property
    def epoch_time(self) -> float | None:
        """Seconds per training epoch (``RunRecord.epoch_time``), median over seeds."""
        times = [r.epoch_time for r in self.records if r.epoch_time is not None]
        return statistics.median(times) if times else None

    @property
    def wall_time(self) -> float | None:
        return self._summary_median("wall_time_s")

    @property
    def settings(self) -> dict[str, object]:
        """The values of the row's own config overrides (the levers table's) as its first run's
        config.yaml holds them: a sweep may have scaled them (EMA's decay with --epochs)."""
        config = read_config(self.records[0].path) if self.run.overrides else {}
        out = {}
        for override in self.run.overrides:
            key, _, given = override.partition("=")
            section, _, name = key.partition(".")
            out[key] = (config.get(section) or {}).get(name, given)
        return out


@dataclass
class Section:
    """One table at one budget on one dataset: a markdown table and its figures."""

    table: Table
    budget: str
    budget_description: str
    dataset: str
    rows: list[Row] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return f"{self.table.name}_{self.dataset}_{self.budget}"


def _budget_description(label: str) -> str:
    return "FULL paper budget" if label == "full" else f"REDUCED budget ({label}), not the paper's"


def collect(root: str | Path) -> list[RunRecord]:
    """Every run directory under ``root`` that belongs to one of the paper's tables."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: give a run directory, or the --out directory of `wrn sweep`")
    all_tables = tables()
    by_id = {(t.name, r.id): r for t in all_tables.values() for r in t.runs}
    records: dict[Path, RunRecord] = {}
    for manifest_path in sorted(root.rglob("sweep.json")):
        manifest = read_json(manifest_path)
        if not manifest or manifest.get("table") not in all_tables:
            continue
        budget = manifest.get("budget", {})
        for entry in manifest.get("runs", []):
            run = by_id.get((manifest["table"], entry.get("id")))
            path = manifest_path.parent / entry["dir"]
            if run is None or not path.is_dir():
                continue
            epochs, rates = read_epochs(path)
            records[path] = RunRecord(
                manifest["table"], budget.get("label", "full"),
                budget.get("description") or _budget_description(budget.get("label", "full")),
                run, int(entry.get("seed", 0)), path, entry.get("model", run.model),
                read_json(path / SUMMARY), epochs, manifest.get("command"), rates)
    # Run directories without a manifest: recognised by <table>/<budget>/<run id>-seed<n>.
    for marker in sorted(root.rglob(LOG)):
        path = marker.parent
        m = re.fullmatch(r"(.+)-seed(\d+)", path.name)
        if path in records or not m or len(path.parents) < 2:
            continue
        table_name, budget = path.parent.parent.name, path.parent.name
        run = by_id.get((table_name, m.group(1)))
        if run is None:
            continue
        summary = read_json(path / SUMMARY)
        model = (summary or {}).get("model") or run.model
        epochs, rates = read_epochs(path)
        records[path] = RunRecord(table_name, budget, _budget_description(budget), run, int(m.group(2)),
                                  path, model, summary, epochs, step_rates=rates)
    return sorted(records.values(), key=lambda r: (r.table, r.budget, str(r.path)))


def sections(records: list[RunRecord]) -> list[Section]:
    """Group records by (table, budget, dataset) in the paper's row order."""
    all_tables = tables()
    out: list[Section] = []
    keys = list(dict.fromkeys((r.table, r.budget, r.run.dataset) for r in records))
    for table_name, budget, dataset in keys:
        table = all_tables[table_name]
        mine = [r for r in records if (r.table, r.budget, r.run.dataset) == (table_name, budget, dataset)]
        section = Section(table, budget, mine[0].budget_description, dataset,
                          commands=list(dict.fromkeys(" ".join(r.command) for r in mine if r.command)))
        for run in table.runs:
            recs = sorted((r for r in mine if r.run.id == run.id), key=lambda r: r.seed)
            if recs:
                section.rows.append(Row(run, recs[0].model, recs))
        out.append(section)
    return out
