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
import math
import os
import re
import statistics
import warnings
from pathlib import Path

from scipy import stats

from wrn.data import catalog
from wrn.errors import UserError
from wrn.experiments.paper import get_table
from wrn.experiments.plots import INSTALL_HINT, available, plot_run_curves, plot_section
from wrn.experiments.records import Row, RunRecord, Section, collect, sections
from wrn.fsio import write_atomic
from wrn.rundir import is_run_dir

CSV_COLUMNS = ("net", "dataset", "model", "seed", "params", "epochs", "test_error", "budget",
               "epoch_time_s", "wall_time_s", "run_dir")


# --- statistics -------------------------------------------------------------------------------


def _correlation(fn, x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan ("undefined")
        value = float(fn(x, y).statistic)
    return None if math.isnan(value) else value


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho; None when undefined (fewer than two values, or one side constant)."""
    return _correlation(stats.spearmanr, x, y)


def kendall_tau(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (ties handled); None when undefined."""
    return _correlation(stats.kendalltau, x, y)


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


def standard_error(error: float | None, dataset: str) -> float | None:
    """Binomial s.e. (points) of one run's test error: the test-set sampling noise alone."""
    n_test = catalog.DATASETS[dataset].splits.get("test") if dataset in catalog.DATASETS else None
    if error is None or not n_test:
        return None
    return math.sqrt(error / 100 * (1 - error / 100) / n_test) * 100


def effect_pairs(section: Section) -> list[tuple[Row, Row]]:
    """The comparisons a table makes: each net with and without a change of one factor.

    Rows that share a network (the dropout table: a net, then the same net +dropout) pair with each
    other; otherwise adjacent rows pair (width 1 -> 2 -> 4, depth 16 -> 22 -> 40, l = 1 -> 2 -> ...).
    """
    def net(row: Row) -> tuple:
        return row.run.model, sorted((k, str(v)) for k, v in row.run.model_kwargs.items() if k != "dropout")

    rows = section.rows
    same_net = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:] if net(a) == net(b)]
    return same_net or list(zip(rows, rows[1:]))


def seed_statistics(a: Row, b: Row) -> tuple[float | None, float | None]:
    """(2 s.e. of the difference in mean error, Welch's two-sided t-test p) from the seeds' own
    spread, which holds the test-set noise as well; (None, None) under two seeds a side."""
    if len(a.errors) < 2 or len(b.errors) < 2:
        return None, None
    noise = 2 * math.sqrt(statistics.variance(a.errors) / len(a.errors)
                          + statistics.variance(b.errors) / len(b.errors))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical seeds on both sides: scipy warns and returns nan
        p = float(stats.ttest_ind(b.errors, a.errors, equal_var=False).pvalue)
    return noise, None if math.isnan(p) else p


def effects(section: Section) -> list[dict]:
    """Per pair: our change in median error, its noise, the paper's change, and whether ours goes
    the paper's way beyond the noise.

    The noise is 2 s.e. of the difference: from the test-set size alone, or, with two seeds or
    more a side, the larger of that and the seeds' spread (a few seeds can agree by chance, so the
    test set's floor stays). ``p`` is Welch's t-test over the seeds.
    """
    out = []
    for a, b in effect_pairs(section):
        ours = None if a.median is None or b.median is None else b.median - a.median
        paper = (None if a.run.paper_error is None or b.run.paper_error is None
                 else b.run.paper_error - a.run.paper_error)
        se_a, se_b = standard_error(a.median, section.dataset), standard_error(b.median, section.dataset)
        noise = 2 * math.hypot(se_a, se_b) if se_a is not None and se_b is not None else None
        spread, p = seed_statistics(a, b)
        if noise is not None and spread is not None:
            noise = max(noise, spread)
        if ours is None or paper is None or noise is None:
            verdict = "-"
        elif abs(ours) <= noise:
            verdict = "within noise"
        else:
            verdict = "same direction" if (ours > 0) == (paper > 0) else "opposite"
        out.append({"from": a.run.label, "to": b.run.label, "ours": ours, "noise": noise, "p": p,
                    "paper": paper, "verdict": verdict})
    return out


def speed_pair() -> tuple[str, str, float]:
    """(fast model, slow model, the paper's time ratio slow/fast) from the speed table: WRN-40-4
    against pre-act ResNet-1001, about 8x."""
    runs = get_table("speed").runs
    fast = next(r for r in runs if r.paper_rel_time == 1.0)
    slow = next(r for r in runs if r is not fast)
    return fast.model, slow.model, slow.paper_rel_time


def time_ratio(section: Section) -> dict | None:
    """Measured time per training epoch of the speed pair's two nets and their ratio, where the
    section has both (the speed and thin-vs-wide tables)."""
    fast_model, slow_model, paper_ratio = speed_pair()
    by_model = {r.run.model: r for r in section.rows}
    fast, slow = by_model.get(fast_model), by_model.get(slow_model)
    if fast is None or slow is None:
        return None
    ratio = (slow.epoch_time / fast.epoch_time
             if slow.epoch_time is not None and fast.epoch_time else None)
    return {"fast": fast, "slow": slow, "ratio": ratio, "paper_ratio": paper_ratio}


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
    our_rank = dict(zip(both, stats.rankdata([medians[i] for i in both]).tolist()))
    paper_rank = dict(zip(both, stats.rankdata([papers[i] for i in both]).tolist()))
    # The speed table compares times relative to its reference net (the paper's GPU is not ours).
    ref_time = next((r.epoch_time for r in section.rows if r.run.paper_rel_time == 1.0), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(section.rows):
        errs = row.errors
        spread = f"{min(errs):.2f}-{max(errs):.2f}" if len(errs) > 1 else "-"
        kwargs = row.run.model_kwargs
        trained_as = row.model + (" " + ", ".join(f"{k}={_kw(v)}" for k, v in kwargs.items()) if kwargs else "")
        lines.append("| " + " | ".join([
            row.run.label, trained_as, f"{len(errs)}/{len(row.records)}", _f(row.median, ".2f"), spread,
            _f(standard_error(row.median, section.dataset), ".2f"), _f(row.run.paper_error, ".2f"),
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
    a = agreement(section)
    if a["n"] < 2:
        return "Ranking agreement with the paper: needs at least two finished runs."
    tau, rho = a["kendall_tau"], a["spearman"]
    return (f"Ranking agreement with the paper over {a['n']} nets: Kendall tau = {_f(tau, '+.2f')}, "
            f"Spearman rho = {_f(rho, '+.2f')} (1 = same order, 0 = unrelated, -1 = reversed). "
            f"Best: ours {a['best_ours']}, paper {a['best_paper']}. "
            f"Worst: ours {a['worst_ours']}, paper {a['worst_paper']}.")


def effects_table(section: Section) -> str:
    rows = effects(section)
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
    t = time_ratio(section)
    if t is None:
        return ""
    fast, slow = t["fast"], t["slow"]
    if t["ratio"] is None:
        return (f"Time per training epoch, {slow.run.label} / {fast.run.label}: not measured yet "
                f"(paper: ~{t['paper_ratio']:g}x).")
    return (f"Time per training epoch ({timing_note}): {slow.run.label} (trained as {slow.model}) "
            f"{slow.epoch_time:.1f} s, {fast.run.label} (trained as {fast.model}) {fast.epoch_time:.1f} s: "
            f"**{t['ratio']:.1f}x** (paper: ~{t['paper_ratio']:g}x, on its GPU).")


def render(root: Path, secs: list[Section], figures: dict[str, list[Path]], plot_note: str | None,
           out: Path, timing_note: str = "as measured", csvs: dict[str, Path] | None = None) -> str:
    lines = ["# Paper reproduction report", "",
             "Test error = 100 - final-epoch test accuracy (never the best "
             "over epochs), median over seeds. Paper numbers: Zagoruyko & Komodakis 2016 (median "
             "of 5 runs, full 200-epoch recipe on the original data). Time per epoch (training "
             f"only, {timing_note}) is measured in each run: a full epoch's images over the "
             "median logged window's img/s, so pauses or a busy machine during some windows do "
             "not count. ±1 s.e. is the binomial standard "
             "error of one run's test error: differences under ~2 s.e. are noise at one seed.", ""]
    if plot_note:
        lines += [f"> {plot_note}", ""]
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
    figures: dict[str, list[Path]] = {}
    note = None
    if plots and not available():
        note = f"Plots skipped: matplotlib is not installed ({INSTALL_HINT})."
    elif plots:
        figures = {s.slug: plot_section(s, out / "plots") for s in secs}
    path = out / "REPORT.md"
    text = render(root, secs, figures, note, out, timing_note, csvs)
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
    if not available():
        raise UserError(f"learning curves need matplotlib: {INSTALL_HINT}")
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
