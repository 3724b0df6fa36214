"""The statistics of a report: ranking agreement with the paper (Kendall's tau, Spearman's rho),
the noise of a test error (binomial standard error) and of a difference over seeds (Welch's
t-test), the effect of each factor a table varies, and the speed pair's time ratio."""

from __future__ import annotations

import math
import statistics
import warnings

from scipy import stats

from wrn.data import catalog
from wrn.experiments.paper import get_table
from wrn.experiments.records import Row, Section


def _correlation(fn, x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan ("undefined")
        value = float(fn(x, y).statistic)
    return None if math.isnan(value) else value


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank (the rank columns of a table)."""
    return stats.rankdata(values).tolist()


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


def standard_error(error: float | None, row: Row, dataset: str) -> float | None:
    """Binomial s.e. (points) of a row's test error: the test-set sampling noise alone, over the
    images its runs evaluated (a run on a 200-image test folder has ~7x the noise of one on 10,000)."""
    n_test = row.test_images or (catalog.DATASETS[dataset].splits.get("test") if dataset in catalog.DATASETS else None)
    if error is None or not n_test:
        return None
    return math.sqrt(error / 100 * (1 - error / 100) / n_test) * 100


def effect_pairs(section: Section) -> list[tuple[Row, Row]]:
    """The comparisons a table makes: each net with and without a change of one factor.

    A table with a baseline row (the levers: the paper's recipe) pairs it with every other row.
    Rows that share a network (the dropout table: a net, then the same net +dropout) pair with each
    other; otherwise adjacent rows pair (width 1 -> 2 -> 4, depth 16 -> 22 -> 40, l = 1 -> 2 -> ...).
    """
    def net(row: Row) -> tuple:
        return row.run.model, sorted((k, str(v)) for k, v in row.run.model_kwargs.items() if k != "dropout")

    rows = section.rows
    base = next((r for r in rows if r.run.label == section.table.baseline), None)
    if base is not None:
        return [(base, r) for r in rows if r is not base]
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
        se_a, se_b = standard_error(a.median, a, section.dataset), standard_error(b.median, b, section.dataset)
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
