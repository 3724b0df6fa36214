"""Finished sweep runs as tables beside the paper's numbers: REPORT.md, one CSV per table, plots.

Input: any directory holding run directories made by ``wrn sweep`` (see ``records``). Output in
``out``: ``REPORT.md`` (markdown tables, ranking agreement, effect sizes, embedded PNGs),
``<table>.csv`` (one row per finished run: the numbers behind the tables) and ``plots/*.png``.
A report written where one already is adds to it: the tables (and budgets) it has no runs for
keep their sections and CSV rows, so tables trained in different places meet in one report.
The reported error is the FINAL-epoch test error (summary.json ``test_acc``), never the best over
epochs. A single run's directory gets its learning curves instead (``plot_run_curves``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from wrn.errors import UserError
from wrn.experiments import stats
from wrn.experiments.paper import get_table
from wrn.experiments.plots import plot_run_curves, plot_section
from wrn.experiments.records import RunRecord, Section, collect, sections
from wrn.fsio import write_atomic
from wrn.rundir import is_run_dir

CSV_COLUMNS = ("net", "dataset", "model", "seed", "params", "epochs", "test_error", "budget",
               "epoch_time_s", "wall_time_s", "run_dir")


# --- markdown ---------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _kw(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def markdown_table(section: Section, timing_note: str = "as measured") -> str:
    """Our error (median over seeds, spread) next to the paper's, with params and time."""
    header = ["run", "trained as", "seeds", "test error % (median)", "spread (min-max)", "±1 s.e.",
              "paper error %", "our rank", "paper rank", "params", "paper params",
              f"time/epoch s ({timing_note})", "paper time/epoch s"]
    medians = [r.median for r in section.rows]
    papers = [r.run.paper_error for r in section.rows]
    both = [i for i, r in enumerate(section.rows) if medians[i] is not None and papers[i] is not None]
    our_rank = dict(zip(both, stats.ranks([medians[i] for i in both])))
    paper_rank = dict(zip(both, stats.ranks([papers[i] for i in both])))
    # The speed table compares times relative to its reference net (the paper's GPU is not ours).
    ref_time = next((r.epoch_time for r in section.rows if r.run.paper_rel_time == 1.0), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(section.rows):
        errs = row.errors
        spread = f"{min(errs):.2f}-{max(errs):.2f}" if len(errs) > 1 else "-"
        kwargs = {**row.run.model_kwargs, **row.settings}
        trained_as = row.model + (" " + ", ".join(f"{k}={_kw(v)}" for k, v in kwargs.items()) if kwargs else "")
        lines.append("| " + " | ".join([
            row.run.label, trained_as, f"{len(errs)}/{len(row.records)}", _f(row.median, ".2f"), spread,
            _f(stats.standard_error(row.median, row, section.dataset), ".2f"), _f(row.run.paper_error, ".2f"),
            _f(our_rank.get(i), "g"), _f(paper_rank.get(i), "g"),
            "-" if row.params is None else f"{row.params / 1e6:.3f}M",
            _f(row.run.paper_params_m, "g") + ("M" if row.run.paper_params_m else ""),
            _f(row.epoch_time, ".1f") + (f" (x{row.epoch_time / ref_time:.1f})"
                                          if ref_time and row.epoch_time is not None else ""),
            _f(row.run.paper_time_s, ".1f") if row.run.paper_rel_time is None
            else f"x{row.run.paper_rel_time:g} (relative)",
        ]) + " |")
    return "\n".join(lines)


def _agreement_line(section: Section) -> str:
    a = stats.agreement(section)
    if a["n"] < 2:
        return "Ranking agreement with the paper: needs at least two finished runs."
    tau, rho = a["kendall_tau"], a["spearman"]
    return (f"Ranking agreement with the paper over {a['n']} nets: Kendall tau = {_f(tau, '+.2f')}, "
            f"Spearman rho = {_f(rho, '+.2f')} (1 = same order, 0 = unrelated, -1 = reversed). "
            f"Best: ours {a['best_ours']}, paper {a['best_paper']}. "
            f"Worst: ours {a['worst_ours']}, paper {a['worst_paper']}.")


def effects_table(section: Section) -> str:
    rows = stats.effects(section)
    if not rows:
        return ""
    lines = ["Effect sizes (change in median test error, points). Noise = 2 s.e. of the difference: "
             "from the test-set size alone, or with 2+ seeds a side the larger of that and the "
             "seeds' own spread; p = Welch's t-test over the seeds (two-sided).", "",
             "| change | ours | noise (±) | p (seeds) | paper | ours vs paper |", "|---|---|---|---|---|---|"]
    for e in rows:
        lines.append(f"| {e['from']} -> {e['to']} | {_f(e['ours'], '+.2f')} | {_f(e['noise'], '.2f')} | "
                     f"{_f(e['p'], '.2f')} | {_f(e['paper'], '+.2f')} | {e['verdict']} |")
    return "\n".join(lines)


def _time_ratio_line(section: Section, timing_note: str) -> str:
    t = stats.time_ratio(section)
    if t is None:
        return ""
    fast, slow = t["fast"], t["slow"]
    if t["ratio"] is None:
        return (f"Time per training epoch, {slow.run.label} / {fast.run.label}: not measured yet "
                f"(paper: ~{t['paper_ratio']:g}x).")
    return (f"Time per training epoch ({timing_note}): {slow.run.label} (trained as {slow.model}) "
            f"{slow.epoch_time:.1f} s, {fast.run.label} (trained as {fast.model}) {fast.epoch_time:.1f} s: "
            f"**{t['ratio']:.1f}x** (paper: ~{t['paper_ratio']:g}x, on its GPU).")


def render(root: Path, secs: list[Section], figures: dict[str, list[Path]], out: Path, timing_note: str = "as measured", csvs: dict[str, Path] | None = None) -> str:
    lines = ["# Paper reproduction report", "",
             "Test error = 100 - final-epoch test accuracy (never the best "
             "over epochs), median over seeds. Paper numbers: Zagoruyko & Komodakis 2016 (median "
             "of 5 runs, full 200-epoch recipe on the original data). Time per epoch (training "
             f"only, {timing_note}) is measured in each run: a full epoch's images over the "
             "median logged window's img/s, so pauses or a busy machine during some windows do "
             "not count. ±1 s.e. is the binomial standard "
             "error of one run's test error: differences under ~2 s.e. are noise at one seed.", ""]
    for s in secs:
        reduced = s.budget != "full"
        lines += [f"## {s.table.title} — {s.dataset}, {'REDUCED' if reduced else 'full'} budget `{s.budget}`", ""]
        if reduced:
            lines += [f"> **{s.budget_description}.** Absolute errors are not comparable with the "
                      "paper's; compare orderings.", ""]
        lines += [f"Paper's claim: {s.table.claim}", "", f"Runs under `{root}`.", ""]
        for command in s.commands:
            lines += [f"Command: `{command}`", ""]
        if s.table.notes:
            lines += [f"Notes: {s.table.notes}", ""]
        data = _data_line(s)
        if data:
            lines += [data, ""]
        lines += [markdown_table(s, timing_note), "", _agreement_line(s), ""]
        for extra in (effects_table(s), _time_ratio_line(s, timing_note)):
            if extra:
                lines += [extra, ""]
        if csvs and s.table.name in csvs:
            lines += [f"Per-run numbers: [{csvs[s.table.name].name}]({os.path.relpath(csvs[s.table.name], out)})", ""]
        unfinished = [r.path.name for row in s.rows for r in row.records if not r.finished]
        if unfinished:
            lines += [f"Not finished (running or interrupted; left out of the medians): {', '.join(unfinished)}", ""]
        for png in figures.get(s.slug, []):
            lines += [f"![{png.stem}]({os.path.relpath(png, out)})", ""]
    return "\n".join(lines)


def _data_line(s: Section) -> str:
    """What the runs trained and were tested on, from their summaries: the data, its
    normalisation (the paper whitened some tables with ZCA) and the test images evaluated."""
    summaries = [r.summary for row in s.rows for r in row.records if r.finished]

    def values(key: str) -> str:
        found = sorted({str(x.get(key)) for x in summaries if x.get(key) is not None})
        return ", ".join(f"`{Path(v).name if key == 'data_source' else v}`" for v in found)

    parts = [f"{label} {text}" for label, text in (("data", values("data_source")), ("normalisation", values("normalize")),
                                                   ("test images per run", values("test_images"))) if text]
    return ("Runs' records: " + "; ".join(parts) + ".") if parts else ""


# --- files ------------------------------------------------------------------------------------


def csv_rows(records: list[RunRecord], out: Path) -> list[dict]:
    """One row per finished run, in the paper's row order then by seed."""
    order = {run.id: i for i, run in enumerate(get_table(records[0].table).runs)} if records else {}
    rows = []
    for r in sorted((r for r in records if r.finished),
                    key=lambda r: (r.budget, order.get(r.run.id, len(order)), r.seed)):
        s = r.summary
        rows.append({"net": r.run.label, "dataset": r.run.dataset, "model": r.model, "seed": r.seed,
                     "params": s.get("params"), "epochs": s.get("epochs"), "test_error": round(r.test_error, 4),
                     "budget": r.budget, "epoch_time_s": r.epoch_time, "wall_time_s": s.get("wall_time_s"),
                     "run_dir": os.path.relpath(r.path, out)})
    return rows


def write_csvs(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """``out/<table>.csv`` per table: its finished runs' numbers (test error in %, final epoch)."""
    written = {}
    for table in dict.fromkeys(r.table for r in records):
        rows = csv_rows([r for r in records if r.table == table], out)
        if not rows:
            continue
        budgets = {row["budget"] for row in rows}
        if (out / f"{table}.csv").exists():  # keep the rows of budgets these runs do not have
            with open(out / f"{table}.csv", newline="") as f:
                rows = [row for row in csv.DictReader(f) if row.get("budget") not in budgets] + rows
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        written[table] = out / f"{table}.csv"
        write_atomic(written[table], buf.getvalue().encode())
    return written


def write_report(root: str | Path, out: str | Path | None = None, *, plots: bool = True,
                 timing_note: str = "as measured") -> Path:
    """REPORT.md, ``<table>.csv`` and (with matplotlib) plots/*.png for the runs under ``root``.

    ``timing_note`` labels the time columns, e.g. "shared 2-core CPU, provisional"."""
    root, out = Path(root), Path(out) if out is not None else Path(root)
    records = collect(root)
    if not records:
        raise UserError(f"no sweep runs under {root}: run `wrn sweep TABLE --out {root}` first")
    secs = sections(records)
    out.mkdir(parents=True, exist_ok=True)
    csvs = write_csvs(records, out)
    figures = {s.slug: plot_section(s, out / "plots") for s in secs} if plots else {}
    path = out / "REPORT.md"
    text = render(root, secs, figures, out, timing_note, csvs)
    if path.exists():
        text = merge_sections(path.read_text(), text)
    write_atomic(path, (text + "\n").encode())
    return path


SECTION = re.compile(r"^## ", re.MULTILINE)


def merge_sections(old: str, new: str) -> str:
    """``new`` (a whole report) with the sections of ``old`` whose heading it lacks appended: a
    section is a table at one budget, from its ``## `` heading to the next."""
    def split(text: str) -> tuple[str, dict[str, str]]:
        parts = SECTION.split(text)
        return parts[0], {p.split("\n", 1)[0]: "## " + p.rstrip("\n") for p in parts[1:]}

    head, fresh = split(new)
    kept = [body for heading, body in split(old)[1].items() if heading not in fresh]
    return "\n\n".join([head.rstrip("\n"), *fresh.values(), *kept])


def report_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """``curves.png`` of one run directory (in ``out`` when given)."""
    run_dir = Path(run_dir)
    path = plot_run_curves(run_dir, Path(out) / "curves.png" if out is not None else None)
    if path is None:
        raise UserError(f"{run_dir / 'log.jsonl'} has no finished epoch yet: wait for the first epoch to end")
    return path


def write(target: str | Path, out: str | Path | None = None, *, plots: bool = True,
          timing_note: str = "as measured") -> list[Path]:
    """What `wrn report DIR` writes: a run directory's curves, or a directory of sweep runs' report."""
    target = Path(target)
    if is_run_dir(target):
        return [report_run(target, out)]
    return [write_report(target, out, plots=plots, timing_note=timing_note)]
