"""PNG figures: a sweep table's figures beside the paper's numbers, and one run's learning curves.

matplotlib (a core dependency: every run draws its curves) is imported on the first figure, not with this
module: it takes over a second to import, which every ``wrn train`` would otherwise pay for a
figure drawn once at the end. Figures are built with ``matplotlib.figure.Figure`` rather than
pyplot: no global state and no backend switch, so a notebook that imports wrn keeps its own.
Every PNG is rendered in memory and written atomically: a crash never leaves half an image.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from wrn.experiments.records import Section
from wrn.fsio import write_atomic
from wrn.rundir import CURVES, SUMMARY, read_config, read_json, read_log

def _figure(**kwargs):
    from matplotlib.figure import Figure  # see the module docstring

    return Figure(layout="constrained", **kwargs)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return path


def _number(value) -> float | None:
    """A finite number from a log record (the log writes a diverged loss as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _error(acc) -> float | None:
    acc = _number(acc)
    return None if acc is None else 100 * (1 - acc)


# --- one run ----------------------------------------------------------------------------------


CURVE_KEYS = ("train_loss", "train_acc", "val_acc", "lr")


def run_curves(run_dir: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Series of a run's log.jsonl, ``{key: [(epochs done, value), ...]}`` for ``CURVE_KEYS``.

    Per epoch, except the lr: from every step record too where the log says its steps per epoch,
    so that a warm-up or a one-cycle schedule shows its shape. A key the log lacks (no val split)
    or logs as null (a diverged loss) has fewer points; a line cut short by a kill is skipped; the
    last record of an epoch (or step) wins: a resumed run writes those after its checkpoint again.
    """
    log = read_log(run_dir)
    by_epoch = {r["epoch"]: r for r in log if r.get("kind") == "epoch" and isinstance(r.get("epoch"), int)}
    curves: dict[str, list[tuple[float, float]]] = {key: [] for key in CURVE_KEYS}
    for epoch in sorted(by_epoch):
        for key in CURVE_KEYS:
            value = _number(by_epoch[epoch].get(key))
            if value is not None:
                curves[key].append((epoch + 1, value))  # the log counts epochs from 0
    spe = next((n for r in reversed(log) if r.get("kind") in ("start", "resume")
                and (n := _number(r.get("steps_per_epoch"))) and n > 0), None)
    if spe and curves["lr"]:
        lr_by_step = {r["step"]: lr for r in log if r.get("kind") in ("step", "epoch") and isinstance(r.get("step"), int)
                      and not isinstance(r["step"], bool) and (lr := _number(r.get("lr"))) is not None}
        curves["lr"] = [(step / spe, lr_by_step[step]) for step in sorted(lr_by_step)]
    return curves


def plot_run_curves(run_dir: str | Path, path: str | Path | None = None) -> Path | None:
    """``run_dir/curves.png``: train loss, train/val accuracy and lr per epoch, from log.jsonl.

    Returns the PNG's path, or None when the log holds no finished epoch yet. A partial log (a run still going, or killed mid-line) plots the epochs it has.
    """
    run_dir = Path(run_dir)
    curves = run_curves(run_dir)
    if not any(curves.values()):
        return None
    summary = read_json(run_dir / SUMMARY) or {}
    fig = _figure(figsize=(12, 3.4))
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    per_epoch = [x for key in CURVE_KEYS if key != "lr" for x, _ in curves[key]]
    last = max(per_epoch or [x for x, _ in curves["lr"]])  # epochs done

    def draw(ax, key, label, scale=1.0, **style):
        if curves[key]:
            xs, ys = zip(*curves[key])
            ax.plot(xs, [y * scale for y in ys], marker="." if len(xs) <= 50 else None, label=label, **style)

    draw(loss_ax, "train_loss", "train")
    draw(acc_ax, "train_acc", "train", 100)
    draw(acc_ax, "val_acc", "val", 100)
    final = _number(summary.get("test_acc")) if summary.get("finished") else None
    if final is not None:  # the final epoch's test accuracy: the number a run reports
        acc_ax.plot([last], [100 * final], "k*", ms=9, label=f"final test {100 * final:.2f}%")
    if acc_ax.get_legend_handles_labels()[0]:
        acc_ax.legend(fontsize=7)
    draw(lr_ax, "lr", "lr", color="tab:gray")
    lrs = [v for _, v in curves["lr"]]
    if lrs and min(lrs) > 0 and max(lrs) > 20 * min(lrs):
        lr_ax.set_yscale("log")  # step schedules: each drop is a factor, equal steps on a log axis
    for ax, title in ((loss_ax, "train loss"), (acc_ax, "accuracy %"), (lr_ax, "learning rate")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{summary.get('model') or run_dir.name}: {last:g} epochs"
                 + ("" if summary.get("finished") else " (not finished)"), fontsize=10)
    return _save(fig, Path(path) if path is not None else run_dir / CURVES)


# --- a sweep table ----------------------------------------------------------------------------


def _lr_drops(epochs: list[dict]) -> list[int]:
    """Epochs after which the lr fell (read from the log, so any schedule is marked correctly)."""
    drops = []
    for prev, cur in zip(epochs, epochs[1:]):
        if cur.get("lr") is not None and prev.get("lr") is not None and cur["lr"] < prev["lr"] * 0.99:
            drops.append(prev["epoch"] + 1)
    return drops


def _schedule(run_dir: Path) -> str:
    """The run's lr schedule from its config.yaml ("step" when unreadable: the recipes' default)."""
    try:
        return str(read_config(run_dir)["optim"]["schedule"])
    except (KeyError, TypeError):
        return "step"


def _title(section: Section, what: str) -> str:
    budget = "FULL budget" if section.budget == "full" else f"REDUCED budget: {section.budget}"
    return f"{section.table.name} ({section.dataset}) - {what}\n[{budget}]"


def plot_learning_curves(section: Section, path: Path) -> Path:
    """Train/val/test error per epoch of every row (all seeds), lr drops dashed."""
    rows = [r for r in section.rows if any(rec.epochs for rec in r.records)]
    cols = min(3, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig = _figure(figsize=(4.2 * cols, 3.2 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        # Only a step schedule has drops to mark; cosine/onecycle decay the lr at every step.
        schedule = _schedule(row.records[0].path)
        for rec in row.records:
            ep = rec.epochs
            x = [e["epoch"] + 1 for e in ep]
            first = rec is row.records[0]
            for key, color, name in (("train_acc", "tab:blue", "train"), ("val_acc", "tab:orange", "val"),
                                     ("test_acc", "tab:green", "test")):
                pts = [(xi, err) for xi, e in zip(x, ep) if (err := _error(e.get(key))) is not None]
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
    rows, labels = section.rows, [r.run.label for r in section.rows]
    fig = _figure(figsize=(10, 4.0))
    ax1, ax2 = fig.subplots(1, 2)
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


def _gaps(values: list[float | None]) -> list[float | None]:
    known = [v for v in values if v is not None]
    return [None if v is None else v - min(known) for v in values]


def plot_vs_paper(section: Section, path: Path) -> Path:
    """The paper's table as bars: our error beside the paper's for each row (left), and each
    row's gap to its column's best net (right: the table's shape, which a reduced budget can keep
    while its absolute errors cannot)."""
    rows = section.rows
    fig = _figure(figsize=(max(9.0, 2.0 * len(rows) + 3), 4.0))
    ax, gap_ax = fig.subplots(1, 2)
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


def plot_section(section: Section, out_dir: Path) -> list[Path]:
    """All figures of one section, in the order REPORT.md shows them."""
    figures = [plot_vs_paper(section, out_dir / f"{section.slug}_vs-paper.png"),
               plot_learning_curves(section, out_dir / f"{section.slug}_curves.png")]
    if len({row.params for row in section.rows}) > 1:  # one network trained differently: no x-axis
        figures.append(plot_error_vs(section, out_dir / f"{section.slug}_error-vs-params.png", "params"))
    return figures + [plot_error_vs(section, out_dir / f"{section.slug}_error-vs-time.png", "time")]
