"""Collect finished sweep runs into tables and plots set beside the paper's numbers.

Input: any directory holding run directories made by ``wrn sweep`` (``sweep.json`` beside them
says what each one is; without it a run directory named ``<run id>-seed<n>`` under
``<table>/<budget>/`` is recognised by its path). Output: ``REPORT.md`` (markdown tables,
embedded PNGs) and ``plots/*.png``. The reported error is the FINAL-epoch test error
(summary.json ``test_acc``), never the best over epochs.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from wrn.errors import UserError
from wrn.experiments.paper import Run, Table, tables
from wrn.fsio import write_atomic

# Test split sizes, for the binomial standard error of a test error (what one seed can resolve).
TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "svhn": 26_032}


@dataclass
class RunRecord:
    """One trained (or training) run directory."""

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

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished"))

    @property
    def test_error(self) -> float | None:
        return 100 * (1 - self.summary["test_acc"]) if self.finished else None


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

    def _summary_median(self, key: str) -> float | None:
        values = [r.summary[key] for r in self.records if r.finished and r.summary.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def params(self) -> int | None:
        v = self._summary_median("params")
        return None if v is None else int(v)

    @property
    def epoch_time(self) -> float | None:
        return self._summary_median("epoch_time_s")

    @property
    def wall_time(self) -> float | None:
        return self._summary_median("wall_time_s")


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


# --- collecting -----------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_epochs(path: Path) -> list[dict]:
    epochs = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return epochs
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: the rest of the log still counts
        if entry.get("kind") == "epoch":
            epochs.append(entry)
    return epochs


def _budget_description(label: str) -> str:
    return "FULL paper budget" if label == "full" else f"REDUCED budget ({label}), not the paper's"


def collect(root: str | Path) -> list[RunRecord]:
    """Every run directory under ``root`` that belongs to one of the paper's tables."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: give the --out directory of `wrn sweep`")
    all_tables = tables()
    by_id = {(t.name, r.id): r for t in all_tables.values() for r in t.runs}
    records: dict[Path, RunRecord] = {}
    for manifest_path in sorted(root.rglob("sweep.json")):
        manifest = _read_json(manifest_path)
        if not manifest or manifest.get("table") not in all_tables:
            continue
        budget = manifest.get("budget", {})
        for entry in manifest.get("runs", []):
            run = by_id.get((manifest["table"], entry.get("id")))
            path = manifest_path.parent / entry["dir"]
            if run is None or not path.is_dir():
                continue
            records[path] = RunRecord(
                manifest["table"], budget.get("label", "full"),
                budget.get("description") or _budget_description(budget.get("label", "full")),
                run, int(entry.get("seed", 0)), path, entry.get("model", run.model),
                _read_json(path / "summary.json"), _read_epochs(path / "log.jsonl"), manifest.get("command"))
    # Run directories without a manifest: recognised by <table>/<budget>/<run id>-seed<n>.
    for marker in sorted(root.rglob("log.jsonl")):
        path = marker.parent
        m = re.fullmatch(r"(.+)-seed(\d+)", path.name)
        if path in records or not m or len(path.parents) < 2:
            continue
        table_name, budget = path.parent.parent.name, path.parent.name
        run = by_id.get((table_name, m.group(1)))
        if run is None:
            continue
        summary = _read_json(path / "summary.json")
        model = (summary or {}).get("model") or run.model
        records[path] = RunRecord(table_name, budget, _budget_description(budget), run, int(m.group(2)),
                                  path, model, summary, _read_epochs(marker))
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


# --- ranking agreement ----------------------------------------------------------------------


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson correlation of the ranks); None when undefined."""
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def kendall_tau(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (handles ties); None when undefined."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denom == 0 else (concordant - discordant) / denom


def agreement(section: Section) -> dict:
    """Ranking agreement of our median errors with the paper's, over rows that have both."""
    pairs = [(r.median, r.run.paper_error, r.run.label) for r in section.rows
             if r.median is not None and r.run.paper_error is not None]
    ours, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    result = {"n": len(pairs), "kendall_tau": kendall_tau(ours, theirs), "spearman": spearman(ours, theirs)}
    if pairs:
        result["best_ours"] = min(pairs, key=lambda p: p[0])[2]
        result["best_paper"] = min(pairs, key=lambda p: p[1])[2]
        result["worst_ours"] = max(pairs, key=lambda p: p[0])[2]
        result["worst_paper"] = max(pairs, key=lambda p: p[1])[2]
    return result


# --- markdown -------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(section: Section, timing_note: str = "as measured") -> str:
    """Our error (median over seeds, spread) next to the paper's, with params and time."""
    n_test = TEST_IMAGES.get(section.dataset)
    header = ["run", "trained as", "seeds", "test error % (median)", "spread (min-max)", "±1 s.e.",
              "paper error %", "our rank", "paper rank", "params", "paper params",
              f"time/epoch s ({timing_note})", "paper time/epoch s"]
    medians = [r.median for r in section.rows]
    papers = [r.run.paper_error for r in section.rows]
    both = [i for i, r in enumerate(section.rows) if medians[i] is not None and papers[i] is not None]
    our_rank = dict(zip(both, _ranks([medians[i] for i in both])))
    paper_rank = dict(zip(both, _ranks([papers[i] for i in both])))
    # The speed table compares times relative to its reference net (the paper's GPU is not ours).
    ref_time = next((r.epoch_time for r in section.rows if r.run.paper_rel_time == 1.0), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(section.rows):
        errs = row.errors
        spread = f"{min(errs):.2f}-{max(errs):.2f}" if len(errs) > 1 else "-"
        # Binomial s.e. of one run's test error: differences below ~2 s.e. are noise at one seed.
        se = (math.sqrt(row.median / 100 * (1 - row.median / 100) / n_test) * 100
              if row.median is not None and n_test else None)
        kwargs = {k: v for k, v in row.run.model_kwargs.items()}
        trained_as = row.model + (" " + ", ".join(f"{k}={_kw(v)}" for k, v in kwargs.items()) if kwargs else "")
        lines.append("| " + " | ".join([
            row.run.label, trained_as, f"{len(errs)}/{len(row.records)}", _f(row.median, ".2f"), spread,
            _f(se, ".2f"), _f(row.run.paper_error, ".2f"),
            _f(our_rank.get(i), "g"), _f(paper_rank.get(i), "g"),
            "-" if row.params is None else f"{row.params / 1e6:.3f}M",
            _f(row.run.paper_params_m, "g") + ("M" if row.run.paper_params_m else ""),
            _f(row.epoch_time, ".1f") + (f" (x{row.epoch_time / ref_time:.1f})"
                                          if ref_time and row.epoch_time is not None else ""),
            _f(row.run.paper_time_s, ".1f") if row.run.paper_rel_time is None
            else f"x{row.run.paper_rel_time:g} (relative)",
        ]) + " |")
    return "\n".join(lines)


def _kw(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _agreement_line(section: Section) -> str:
    a = agreement(section)
    if a["n"] < 2:
        return "Ranking agreement with the paper: needs at least two finished runs."
    tau, rho = a["kendall_tau"], a["spearman"]
    return (f"Ranking agreement with the paper over {a['n']} nets: Kendall tau = {_f(tau, '+.2f')}, "
            f"Spearman rho = {_f(rho, '+.2f')} (1 = same order, 0 = unrelated, -1 = reversed). "
            f"Best: ours {a['best_ours']}, paper {a['best_paper']}. "
            f"Worst: ours {a['worst_ours']}, paper {a['worst_paper']}.")


def render(root: Path, secs: list[Section], plots: dict[str, list[Path]], plot_note: str | None,
           out: Path, timing_note: str = "as measured") -> str:
    lines = ["# Paper reproduction report", "",
             f"Runs under `{root}`. Test error = 100 - final-epoch test accuracy (never the best "
             "over epochs), median over seeds. Paper numbers: Zagoruyko & Komodakis 2016 (median "
             "of 5 runs, full 200-epoch recipe on the original data). Time per epoch (training "
             f"only, {timing_note}) is as measured in each run. ±1 s.e. is the binomial standard "
             "error of one run's test error: differences under ~2 s.e. are noise at one seed.", ""]
    if plot_note:
        lines += [f"> {plot_note}", ""]
    for s in secs:
        reduced = s.budget != "full"
        lines += [f"## {s.table.title} — {s.dataset}, {'REDUCED' if reduced else 'full'} budget `{s.budget}`", ""]
        if reduced:
            lines += [f"> **{s.budget_description}.** Absolute errors are not comparable with the "
                      "paper's; compare orderings.", ""]
        lines += [f"Paper's claim: {s.table.claim}", ""]
        for command in s.commands:
            lines += [f"Command: `{command}`", ""]
        if s.table.notes:
            lines += [f"Notes: {s.table.notes}", ""]
        lines += [markdown_table(s, timing_note), "", _agreement_line(s), ""]
        unfinished = [r.path.name for row in s.rows for r in row.records if not r.finished]
        if unfinished:
            lines += [f"Not finished (running or interrupted; left out of the medians): {', '.join(unfinished)}", ""]
        for png in plots.get(s.slug, []):
            lines += [f"![{png.stem}]({os.path.relpath(png, out)})", ""]
    return "\n".join(lines)


def write_report(root: str | Path, out: str | Path | None = None, *, plots: bool = True,
                 timing_note: str = "as measured") -> Path:
    """REPORT.md (+ plots/*.png when matplotlib is installed) for the runs under ``root``.

    ``timing_note`` labels the time columns, e.g. "shared 2-core CPU, provisional"."""
    root, out = Path(root), Path(out) if out is not None else Path(root)
    records = collect(root)
    if not records:
        raise UserError(f"no sweep runs under {root}: run `wrn sweep TABLE --out {root}` first")
    secs = sections(records)
    written: dict[str, list[Path]] = {}
    note = None
    if plots:
        try:
            import matplotlib
        except ImportError:
            note = "Plots skipped: matplotlib is not installed (pip install 'wrn[plot]')."
        else:
            matplotlib.use("Agg")  # files only; no display on a training machine
            for s in secs:
                written[s.slug] = plot_section(s, out / "plots")
    path = out / "REPORT.md"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (render(root, secs, written, note, out, timing_note) + "\n").encode())
    return path


# --- plots (matplotlib: the optional `plot` extra) ------------------------------------------


def _save(fig, path: Path) -> Path:
    """Render in memory, then an atomic write: a crash never leaves half an image behind."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return path


def _lr_drops(epochs: list[dict]) -> list[int]:
    """Epochs after which the lr fell (read from the log, so any schedule is marked correctly)."""
    drops = []
    for prev, cur in zip(epochs, epochs[1:]):
        if cur.get("lr") is not None and prev.get("lr") is not None and cur["lr"] < prev["lr"] * 0.99:
            drops.append(prev["epoch"] + 1)  # log epochs count from 0; the plot counts epochs done
    return drops


def _schedule(run_dir: Path) -> str:
    """The run's lr schedule from its config.yaml ("step" when unreadable: the recipes' default)."""
    import yaml

    try:
        return str(yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["schedule"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "step"


def _title(section: Section, what: str) -> str:
    budget = "FULL budget" if section.budget == "full" else f"REDUCED budget: {section.budget}"
    return f"{section.table.name} ({section.dataset}) - {what}\n[{budget}]"


def _error(acc) -> float | None:
    return None if acc is None else 100 * (1 - acc)


def plot_learning_curves(section: Section, path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = [r for r in section.rows if any(rec.epochs for rec in r.records)]
    cols = min(3, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        # Only a step schedule has drops to mark; cosine/onecycle decay the lr at every step.
        schedule = _schedule(row.records[0].path)
        for rec in row.records:
            ep = rec.epochs
            x = [e["epoch"] + 1 for e in ep]  # epochs completed
            first = rec is row.records[0]
            for key, color, name in (("train_acc", "tab:blue", "train"), ("val_acc", "tab:orange", "val"),
                                     ("test_acc", "tab:green", "test")):
                pts = [(xi, _error(e.get(key))) for xi, e in zip(x, ep) if e.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), color=color, lw=1.2, alpha=0.8, marker=".",
                            label=name if first else None)
            for d in _lr_drops(ep) if first and schedule == "step" else []:
                ax.axvline(d, color="gray", ls="--", lw=0.8)
            if rec.finished:
                ax.plot([x[-1] if x else 0], [rec.test_error], "k*", ms=8,
                        label="final test" if first else None)
        ax.set_title(f"{row.run.label} ({row.model})", fontsize=9)
        ax.set_xlabel("epoch (dashed: lr drop)" if schedule == "step" else f"epoch (lr: {schedule})", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("error %")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(_title(section, "learning curves"), fontsize=10)
    return _save(fig, path)


def _scatter(ax, xs, ys, labels, marker, color, name):
    pts = [(x, y, l) for x, y, l in zip(xs, ys, labels) if x is not None and y is not None]
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=name)
    for x, y, label in pts:
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.grid(alpha=0.3)


def plot_error_vs(section: Section, path: Path, what: str) -> Path:
    """Two panels, ours and the paper's (absolute levels differ; the shape is what compares)."""
    import matplotlib.pyplot as plt

    rows, labels = section.rows, [r.run.label for r in section.rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.0), layout="constrained")
    if what == "params":
        _scatter(ax1, [r.params and r.params / 1e6 for r in rows], [r.median for r in rows], labels,
                 "o", "tab:blue", "ours")
        _scatter(ax2, [r.run.paper_params_m for r in rows], [r.run.paper_error for r in rows], labels,
                 "s", "tab:red", "paper")
        ax1.set_xlabel("params (M)")
        ax2.set_xlabel("params (M)")
    else:
        _scatter(ax1, [r.wall_time and r.wall_time / 60 for r in rows], [r.median for r in rows], labels,
                 "o", "tab:blue", "ours")
        ax1.set_xlabel("training time, minutes (as measured)")
        ptimes = [r.run.paper_time_s or r.run.paper_rel_time for r in rows]
        _scatter(ax2, ptimes, [r.run.paper_error for r in rows], labels, "s", "tab:red", "paper")
        rel = any(r.run.paper_rel_time for r in rows)
        ax2.set_xlabel("relative training time" if rel else "s per epoch (paper's GPU)")
    ax1.set_ylabel("test error %")
    ax1.set_title("ours (final epoch, median over seeds)", fontsize=9)
    ax2.set_title("paper", fontsize=9)
    fig.suptitle(_title(section, f"error vs {what}"), fontsize=10)
    return _save(fig, path)


def plot_vs_paper(section: Section, path: Path) -> Path:
    """The paper's table as bars: our error beside the paper's for each row (left), and each
    row's gap to its column's best net (right: the table's shape, which a reduced budget can keep
    while its absolute errors cannot)."""
    import matplotlib.pyplot as plt

    rows = section.rows
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(max(9.0, 2.0 * len(rows) + 3), 4.0), layout="constrained")
    xs = list(range(len(rows)))
    ours = [r.median for r in rows]
    paper = [r.run.paper_error for r in rows]
    for axis, values_ours, values_paper, fmt in (
        (ax, ours, paper, "{:.2f}"),
        (gap_ax, _gaps(ours), _gaps(paper), "{:+.2f}"),
    ):
        for offset, values, color, name in ((-0.2, values_ours, "tab:blue", "ours (final-epoch test error)"),
                                            (0.2, values_paper, "tab:red", "paper")):
            axis.bar([x + offset for x in xs], [v if v is not None else 0 for v in values], 0.4,
                     color=color, label=name)
            for x, v in zip(xs, values):
                if v is not None:
                    axis.annotate(fmt.format(v), (x + offset, v), ha="center", fontsize=7,
                                  xytext=(0, 2), textcoords="offset points")
        axis.set_xticks(xs)
        axis.set_xticklabels([r.run.label for r in rows], rotation=20, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    for x, row in zip(xs, rows):
        errs = row.errors
        if len(errs) > 1:  # the spread over seeds
            ax.plot([x - 0.2, x - 0.2], [min(errs), max(errs)], color="k", lw=1.5)
    ax.set_ylabel("test error %")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    ax.set_title("test error", fontsize=9)
    gap_ax.set_ylabel("error - best error of the column (points)")
    gap_ax.set_title("gap to the best net (the table's shape)", fontsize=9)
    fig.suptitle(_title(section, "ours vs paper"), fontsize=10)
    return _save(fig, path)


def _gaps(values: list[float | None]) -> list[float | None]:
    known = [v for v in values if v is not None]
    return [None if v is None else v - min(known) for v in values]


def plot_section(section: Section, out_dir: Path) -> list[Path]:
    """All figures of one section, in the order REPORT.md shows them."""
    return [
        plot_vs_paper(section, out_dir / f"{section.slug}_vs-paper.png"),
        plot_learning_curves(section, out_dir / f"{section.slug}_curves.png"),
        plot_error_vs(section, out_dir / f"{section.slug}_error-vs-params.png", "params"),
        plot_error_vs(section, out_dir / f"{section.slug}_error-vs-time.png", "time"),
    ]
