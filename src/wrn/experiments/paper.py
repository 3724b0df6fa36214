"""The paper's experiments as data: the runs each table needs and the numbers the paper reports.

Source: Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016, arXiv 1605.07146 v4).
Errors are test error in percent (median of 5 runs for CIFAR, at the end of training), params in
millions, time in seconds per training epoch (block-types table only). One table beyond the
paper, ``levers``, adds each later paper's training lever alone to the paper's recipe, with the
WRN-28-10 error that lever's own paper published. Nothing here builds a model
or trains; `wrn.experiments.sweep` turns a table into runs, each with its run's recipe (preset).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from wrn.data import catalog
from wrn.errors import UserError
from wrn.train.config import load_config

# The WRNs' recipe (preset) per dataset: the paper trains CIFAR and SVHN differently.
RECIPE = {"cifar10": "paper-cifar", "cifar100": "paper-cifar", "svhn": "paper-svhn"}
# The thin baselines train with their own papers' recipes (He et al. 2016a/b), not the WRN one:
# ResNet-110 and pre-act ResNet-1001 with a warm-up at lr 0.01, pre-act ResNet-164 without.
BASELINE_RECIPE = {"resnet-110": "resnet-cifar-warmup", "preact-resnet-164": "resnet-cifar",
                   "preact-resnet-1001": "resnet-cifar-warmup"}
# The tables' datasets and their class counts (the catalog's).
NUM_CLASSES = {name: catalog.get(name).num_classes for name in RECIPE}


def recipe_for(model: str, dataset: str) -> str:
    """The preset a table's network trains with on ``dataset``."""
    return BASELINE_RECIPE.get(model) or RECIPE[dataset]


@functools.cache
def recipe_dropout(preset: str) -> float:
    """The dropout rate a recipe sets: the dropout table's rate for the paper's presets."""
    return load_config(preset).model.dropout


# How a row's override names its run directory: the key's last part, or this short form.
OVERRIDE_NAMES = {"policy": "", "policy_ops": "n", "policy_magnitude": "m", "sam_rho": "sam"}


@dataclass(frozen=True)
class Run:
    """One network of a table trained on one dataset, with what the paper reports for it."""

    label: str  # how the paper's table names the row, e.g. "B(1,3,1)"
    model: str  # registry name, e.g. "wrn-40-2"
    dataset: str  # cifar10 | cifar100 | svhn
    model_kwargs: dict = field(default_factory=dict)  # block, blocks_per_group, dropout
    paper_error: float | None = None  # test error %, None where the paper has no number
    paper_params_m: float | None = None
    paper_time_s: float | None = None  # s per epoch (block types) ...
    paper_rel_time: float | None = None  # ... or time relative to the table's reference net
    recipe: str = ""  # the preset it trains with; "" = recipe_for(model, dataset)
    # Config overrides that make this row (the levers table: "data.cutout=16"); a sweep adds them
    # to every seed's command, and they name the run (``id``).
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.recipe:
            object.__setattr__(self, "recipe", recipe_for(self.model, self.dataset))

    @property
    def id(self) -> str:
        """Stable, path-safe name, e.g. ``c10_wrn-40-2_b1-3-1`` (run directories use it)."""
        parts = [catalog.get(self.dataset).short, self.model]
        if "block" in self.model_kwargs:
            parts.append("b" + "-".join(str(k) for k in self.model_kwargs["block"]))
        if "blocks_per_group" in self.model_kwargs:
            parts.append(f"n{self.model_kwargs['blocks_per_group']}")
        if self.model_kwargs.get("dropout"):
            parts.append(f"drop{self.model_kwargs['dropout']}")
        for override in self.overrides:  # "data.policy=autoaugment" -> "autoaugment", "optim.sam_rho=0.05" -> "sam0.05"
            key, _, value = override.partition("=")
            name = key.rsplit(".", 1)[-1]
            parts.append(OVERRIDE_NAMES.get(name, name.replace("_", "")) + value)
        return "_".join(parts)


@dataclass(frozen=True)
class Table:
    name: str  # CLI name, e.g. "block-types"
    title: str
    claim: str  # the paper's conclusion the table supports, checked by the report
    runs: tuple[Run, ...]
    notes: str = ""
    # The label of the row every other row is compared with (the levers table's "paper recipe");
    # None: rows of one network pair up, else neighbours (``stats.effect_pairs``).
    baseline: str | None = None

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.runs))


def _block_types() -> Table:
    # (label, depth, block, params M, time s/epoch, C10 error)
    rows = [
        ("B(1,3,1)", 40, (1, 3, 1), 1.4, 85.8, 6.06),
        ("B(3,1)", 40, (3, 1), 1.2, 67.5, 5.78),
        ("B(1,3)", 40, (1, 3), 1.3, 72.2, 6.42),
        ("B(3,1,1)", 40, (3, 1, 1), 1.3, 82.2, 5.86),
        ("B(3,3)", 28, (3, 3), 1.5, 67.5, 5.73),
        ("B(3,1,3)", 22, (3, 1, 3), 1.1, 59.9, 5.78),
    ]
    runs = tuple(
        Run(label, f"wrn-{depth}-2", "cifar10", {"block": block}, err, params, time)
        for label, depth, block, params, time, err in rows
    )
    return Table(
        "block-types",
        "Block types, WRN-n-2 (k=2), CIFAR-10 (paper Table 2)",
        "Block types with two or three convolutions of comparable size reach similar error; "
        "B(3,3) is best by a small margin and B(1,3) is worst.",
        runs,
        notes="depth keeps N = (n-4)/6 blocks per group whatever the block (the paper's naming); "
        "time = one training epoch on the paper's GPU.",
    )


def _deepening() -> Table:
    # 40 conv layers and 2.2M params each: N = 36 / (3 l) blocks per group.
    rows = [(1, 12, 6.69), (2, 6, 5.43), (3, 4, 5.65), (4, 3, 5.93)]
    runs = tuple(
        Run(f"l={l} B({','.join(['3'] * l)})", "wrn-40-2", "cifar10",
            {"block": (3,) * l, "blocks_per_group": n}, err, 2.2)
        for l, n, err in rows
    )
    return Table(
        "deepening",
        "Deepening factor l, WRN-40-2 (2.2M params), CIFAR-10 (paper Table 3)",
        "l = 2 (B(3,3)) is best; l = 1 is clearly worst and l = 3, 4 are slightly worse than l = 2.",
        runs,
    )


def _depth_width() -> Table:
    # (depth, k, params M, C10, C100)
    rows = [
        (40, 1, 0.6, 6.85, 30.89), (40, 2, 2.2, 5.33, 26.04), (40, 4, 8.9, 4.97, 22.89),
        (40, 8, 35.7, 4.66, None), (28, 10, 36.5, 4.17, 20.50), (28, 12, 52.5, 4.33, 20.43),
        (22, 8, 17.2, 4.38, 21.22), (22, 10, 26.8, 4.44, 20.75), (16, 8, 11.0, 4.81, 22.07),
        (16, 10, 17.1, 4.56, 21.59),
    ]
    runs = []
    for dataset, col in (("cifar10", 3), ("cifar100", 4)):
        for row in rows:
            if row[col] is not None:
                runs.append(Run(f"WRN-{row[0]}-{row[1]}", f"wrn-{row[0]}-{row[1]}", dataset, {},
                                row[col], row[2]))
    return Table(
        "depth-width",
        "Depth x width, B(3,3), CIFAR-10 / CIFAR-100 (paper Table 4)",
        "Widening helps at every depth up to ~36M params; WRN-28-10 is best on CIFAR-10, and a "
        "16-layer WRN-16-8 beats the thinner, deeper WRN-40-2/40-4.",
        tuple(runs),
    )


# The rows of the depth x width table that isolate one factor each (the CPU reproduction's tables).
WIDTH_ROWS = ((40, 1), (40, 2), (40, 4))  # width k at a fixed depth of 40
DEPTH_ROWS = ((16, 8), (22, 8), (40, 8))  # depth at a fixed width of 8


def _subset_of_depth_width(name: str, title: str, claim: str, rows: tuple[tuple[int, int], ...]) -> Table:
    """The depth x width table's CIFAR-10 runs for ``rows`` (depth, k), with the paper's numbers."""
    wanted = {f"wrn-{d}-{k}" for d, k in rows}
    runs = tuple(r for r in _depth_width().runs if r.dataset == "cifar10" and r.model in wanted)
    return Table(name, title, claim, runs, notes="rows of the depth x width table (paper Table 4).")


def _width() -> Table:
    return _subset_of_depth_width(
        "width", "Width at a fixed depth, WRN-40-k, CIFAR-10 (paper Table 4)",
        "At a fixed depth of 40, error falls as the width k grows from 1 to 2 to 4.", WIDTH_ROWS)


def _depth() -> Table:
    return _subset_of_depth_width(
        "depth", "Depth at a fixed width, WRN-n-8, CIFAR-10 (paper Table 4)",
        "At a fixed width of 8, depth 22 is best: going from 16 to 22 layers helps, 40 layers is worse "
        "again (4.81 / 4.38 / 4.66).", DEPTH_ROWS)


def _dropout() -> Table:
    # (depth, k, params M, {dataset: (error without, error with dropout)})
    rows = [
        (16, 4, 2.7, {"cifar10": (5.02, 5.24), "cifar100": (24.03, 23.91), "svhn": (1.85, 1.64)}),
        (28, 10, 36.5, {"cifar10": (4.00, 3.89), "cifar100": (19.25, 18.85)}),
        (52, 1, 0.8, {"cifar10": (6.43, 6.28), "cifar100": (29.89, 29.78), "svhn": (2.08, 1.70)}),
    ]
    runs = []
    for dataset in ("cifar10", "cifar100", "svhn"):
        for depth, k, params, errors in rows:
            if dataset not in errors:
                continue
            plain, dropped = errors[dataset]
            name = f"wrn-{depth}-{k}"
            runs.append(Run(f"WRN-{depth}-{k}", name, dataset, {}, plain, params))
            runs.append(Run(f"WRN-{depth}-{k} +dropout", name, dataset,
                            {"dropout": recipe_dropout(RECIPE[dataset])}, dropped, params))
    return Table(
        "dropout",
        "Dropout in residual blocks, CIFAR-10 / CIFAR-100 / SVHN (paper Table 6)",
        "Dropout between the convolutions helps most nets on every dataset (the exception: "
        "WRN-16-4 on CIFAR-10), most clearly on SVHN.",
        tuple(runs),
        notes=f"dropout {recipe_dropout(RECIPE['cifar10']):g} on CIFAR, {recipe_dropout(RECIPE['svhn']):g} "
        "on SVHN (the recipes'); SVHN trains on train + extra.",
    )


def _thin_vs_wide() -> Table:
    # (label, model, params M, C10, C100): mean/std preprocessing rows of the paper's Table 5.
    rows = [
        ("ResNet-110", "resnet-110", 1.7, 6.43, 25.16),
        ("pre-act ResNet-164", "preact-resnet-164", 1.7, 5.46, 24.33),
        ("pre-act ResNet-1001", "preact-resnet-1001", 10.2, 4.92, 22.71),
        ("WRN-40-4", "wrn-40-4", 8.9, 4.53, 21.18),
        ("WRN-16-8", "wrn-16-8", 11.0, 4.27, 20.43),
        ("WRN-28-10", "wrn-28-10", 36.5, 4.00, 19.25),
    ]
    runs = tuple(
        Run(label, model, dataset, {}, row_err, params)
        for dataset, col in (("cifar10", 0), ("cifar100", 1))
        for label, model, params, *errs in rows
        for row_err in [errs[col]]
    )
    return Table(
        "thin-vs-wide",
        "Thin vs wide residual networks, CIFAR-10 / CIFAR-100 (paper Table 5)",
        "Every WRN beats the thin ResNets; WRN-40-4 (8.9M) beats pre-act ResNet-1001 (10.2M) and "
        "WRN-16-8 (16 layers) beats the 1000-layer net.",
        runs,
        notes="the thin ResNets train with their own papers' recipes (presets resnet-cifar and "
        "resnet-cifar-warmup: 164 epochs, lr 0.1 /10 at epochs 82 and 123, wd 1e-4), the WRNs with paper-cifar.",
    )


def _speed() -> Table:
    runs = (
        Run("WRN-40-4", "wrn-40-4", "cifar10", {}, 4.53, 8.9, paper_rel_time=1.0),
        Run("pre-act ResNet-1001", "preact-resnet-1001", "cifar10", {}, 4.92, 10.2, paper_rel_time=8.0),
    )
    return Table(
        "speed",
        "Training speed: WRN-40-4 vs pre-act ResNet-1001, CIFAR-10 (paper Sec. 3, Fig. 4)",
        "WRN-40-4 trains about 8x faster than pre-act ResNet-1001 at similar (better) accuracy.",
        runs,
        notes="the paper times forward+backward per minibatch on a GPU; relative time = time / "
        "WRN-40-4's time.",
    )


# The later papers' levers, each alone on the paper's recipe (no dropout, as in the paper's
# Table 4): (label, overrides, the WRN-28-10 CIFAR-10 error the lever's own paper published with
# its full recipe). Sources: docs/recipes.md (cutout: DeVries & Taylor 2017 Table 1; AutoAugment:
# Cubuk et al. 2019 Table 2; RandAugment: Cubuk et al. 2020 Table 2, N = 3, M = 5 on their 0..10
# scale = 15 on ours; TrivialAugment-Wide: Mueller & Hutter 2021 Table 2; SAM: Foret et al. 2021
# Table 1, basic augmentation). No paper publishes an average of WRN-28-10's weights alone.
# EMA's decay 0.9999 at 200 epochs averages over ~10,000 steps (13% of training); a sweep with
# --epochs keeps that fraction (``sweep.scale_ema``), as it keeps the lr drops'.
LEVERS = (
    ("paper recipe", (), 4.00),
    ("+cutout 16", ("data.cutout=16",), 3.08),
    ("+AutoAugment", ("data.policy=autoaugment",), 2.6),
    ("+RandAugment N3 M15", ("data.policy=randaugment", "data.policy_ops=3", "data.policy_magnitude=15"), 2.7),
    ("+TrivialAugment", ("data.policy=trivialaugment",), 2.54),
    ("+EMA 0.9999", ("train.ema=0.9999",), None),
    ("+SAM rho 0.05", ("optim.sam_rho=0.05",), 2.7),
)


def _levers() -> Table:
    return Table(
        "levers",
        "Each later recipe's lever alone on the paper's recipe, WRN-28-10, CIFAR-10",
        "Each lever lowers WRN-28-10's error at the full 200-epoch budget (its paper's number); "
        "heavy augmentation is expected to help least, or hurt, at short budgets.",
        tuple(Run(label, "wrn-28-10", "cifar10", {}, err, 36.5, overrides=ov, recipe="paper-cifar")
              for label, ov, err in LEVERS),
        notes="paper error = the WRN-28-10 error each lever's own paper published (200 epochs, its own "
        "code and baseline: 3.5-4.0), the paper recipe's = this paper's WRN-28-10 without dropout; "
        "the published augmentation recipes also change the schedule and dropout (docs/recipes.md), "
        "here only the lever changes. SAM costs two passes a step. A run shortened by --epochs keeps EMA's "
        "horizon, 1 / (1 - decay) steps, at its fraction of training (6 of 200 epochs: decay 0.99667).",
        baseline="paper recipe",
    )


def tables() -> dict[str, Table]:
    """Every table by CLI name (built fresh: callers may not mutate shared state)."""
    return {t.name: t for t in (_block_types(), _deepening(), _depth_width(), _width(), _depth(), _dropout(),
                                _thin_vs_wide(), _speed(), _levers())}


def get_table(name: str) -> Table:
    all_tables = tables()
    if name not in all_tables:
        raise UserError(f"unknown table {name!r}: choose one of {', '.join(all_tables)} (wrn sweep --list)")
    return all_tables[name]
