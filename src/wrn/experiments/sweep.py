"""Plan, launch and resume the runs of one of the paper's tables.

A table (``wrn.experiments.paper``) becomes one run per (network, seed) under

    OUT/<table>/<budget>/<run id>-seed<n>/      (a run directory of ``engine.fit``)
    OUT/<table>/<budget>/sweep.json             (the plan: what each directory is)
    OUT/<table>/<budget>/logs/<run>.txt         (the run's console output; --launcher slurm:
                                                 slurm/<job id>_0_log.out, submitit's job logs)

where <budget> is ``full`` for the paper's recipe, or e.g. ``reduced-e4-sub10000-k0.5`` when a
budget knob is set, so a reduced run can never pass for the paper's. Each run is ``wrn train
--preset P --out RUN_DIR OVERRIDES`` (``wrn.experiments.launchers`` runs them, here or on a
cluster). Finished runs (summary.json with ``finished``) are skipped; runs with a checkpoint
resume from it with ``wrn train --resume RUN_DIR``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from wrn import rundir
from wrn.data import catalog
from wrn.errors import UserError
from wrn.experiments.paper import NUM_CLASSES, Run, Table
from wrn.fsio import write_atomic
from wrn.models.flops import model_size
from wrn.models.wide_resnet import WRN_NAME, parse_wrn
from wrn.train import checkpoint
from wrn.train.config import RUN_NEUTRAL_KEYS, SPEED_KEYS, SWEEP_FIXED_KEYS, allowed, load_config

# A training step costs ~3x the forward pass (forward + backward for activations and weights).
TRAIN_FLOPS_PER_FORWARD = 3
# Throughput assumptions for the cost estimate, in sustained training TFLOP/s.
# H100: the data README's reference run (WRN-16-8, 3.1 GFLOP forward, 45k images x 200 epochs in
# 409 s, bf16) sustains ~200 TFLOP/s. CPU, until runs of the sweep have finished (cpu_tflops):
# the reduced reproduction (results/README.md) trained wrn-40-1 B(1,3,1) (0.11 GFLOP forward) at
# ~200 img/s in bf16 + channels_last on one thread of a shared 2-core AVX2 EPYC:
# 3 x 0.11e9 x 200 = ~0.07 TFLOP/s. The paper presets (fp32) ran at 0.04-0.07 on such machines.
H100_TFLOPS = 200.0
DEFAULT_CPU_TFLOPS = 0.07
@dataclass(frozen=True)
class Budget:
    """The knobs that shrink a table so it fits a CPU; all unset = the paper's budget."""

    epochs: int | None = None  # None = the recipe's (200 for CIFAR); lr milestones scale with it
    subset: int = 0  # a seeded, stratified sample of K training images; 0 = all
    model_scale: float = 1.0  # width k -> max(1, round(k * scale)) for WRNs
    depth: int | None = None  # every WRN at this depth (WRN-28-10 -> WRN-16-10); None = the table's
    # An lr schedule other than the recipe's (set by plan() from an optim.schedule override), so
    # e.g. a one-cycle run is labelled as such and never passes for the paper's step schedule.
    schedule: str | None = None
    # Every other override that changes the recipe ("optim.lr=0.2", "accel.precision=bf16", ...),
    # set by plan(), so that the label names all that differs from the paper's recipe.
    changes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs {self.epochs} must be >= 1: e.g. --epochs 4")
        if self.subset < 0:
            raise UserError(f"--subset {self.subset} must be >= 0 (0 = all images)")
        if not 0 < self.model_scale <= 1:
            raise UserError(f"--model-scale {self.model_scale} must be in (0, 1]: e.g. 0.5 halves k")
        if self.depth is not None and (self.depth < 10 or (self.depth - 4) % 6):
            raise UserError(f"--depth {self.depth} is not a WRN depth: it must be 6N + 4 >= 10, e.g. 16")

    @property
    def full(self) -> bool:
        return (self.epochs is None and self.subset == 0 and self.model_scale == 1.0 and self.depth is None
                and self.schedule is None and not self.changes)

    @property
    def label(self) -> str:
        if self.full:
            return "full"
        parts = ["reduced"]
        if self.epochs is not None:
            parts.append(f"e{self.epochs}")
        if self.subset:
            parts.append(f"sub{self.subset}")
        if self.model_scale != 1.0:
            parts.append(f"k{self.model_scale:g}")
        if self.depth is not None:
            parts.append(f"d{self.depth}")
        if self.schedule:
            parts.append(self.schedule)
        for change in self.changes:  # "optim.lr=0.2" -> "lr0.2"
            key, _, value = change.partition("=")
            parts.append(key.rsplit(".", 1)[-1] + value.replace("/", "_"))
        return "-".join(parts)

    def describe(self) -> str:
        if self.full:
            return "FULL paper budget (recipe epochs, all training images, the paper's widths)"
        parts = []
        if self.epochs is not None:
            parts.append(f"{self.epochs} epochs" + ("" if self.schedule else " (lr milestones scaled)"))
        if self.subset:
            parts.append(f"a seeded stratified sample of {self.subset} training images")
        if self.model_scale != 1.0:
            parts.append(f"width k x {self.model_scale:g}")
        if self.depth is not None:
            parts.append(f"depth {self.depth}")
        if self.schedule:
            parts.append(f"{self.schedule} lr schedule instead of the recipe's")
        parts += [f"{c} instead of the recipe's" for c in self.changes]
        return "REDUCED budget, not the paper's: " + ", ".join(parts)


def scale_model(name: str, scale: float, depth: int | None = None) -> str:
    """``wrn-40-2`` at scale 0.5 -> ``wrn-40-1``, at depth 16 -> ``wrn-16-2``; nets without a width
    k are kept as they are."""
    wrn = parse_wrn(name)
    if (scale == 1.0 and depth is None) or wrn is None:
        return name
    own_depth, width = wrn
    return WRN_NAME.format(depth=depth or own_depth, width=max(1, round(width * scale)))


def _check_distinct(runs: list[Run], budget: Budget) -> None:
    """Refuse a scale or depth that makes two of a table's nets one (a width cannot go below 1):
    their "difference" would be seed noise, reported as the paper's effect."""
    nets: dict[tuple, list[str]] = {}
    for r in runs:
        key = (r.dataset, r.recipe, json.dumps(r.model_kwargs, sort_keys=True), r.overrides,
               scale_model(r.model, budget.model_scale, budget.depth))
        nets.setdefault(key, []).append(r.model)
    for key, models in nets.items():
        if len(set(models)) > 1:
            flag = f"--model-scale {budget.model_scale:g}" if budget.depth is None else f"--depth {budget.depth}"
            raise UserError(f"{flag} trains {key[-1]} for each of {', '.join(sorted(set(models)))}: their "
                            "difference would be seed noise; use a larger --model-scale, no --depth, or fewer "
                            "--epochs instead")


def scale_ema(decay: float, recipe_epochs: int, epochs: int) -> float:
    """The moving average's decay that keeps its horizon, 1 / (1 - decay) steps, the same fraction
    of training when a run is shortened from ``recipe_epochs`` to ``epochs`` (like the lr drops)."""
    if not decay:
        return decay
    horizon = max(1.0, 1 / (1 - decay) * epochs / recipe_epochs)
    return 1 - 1 / horizon


def scale_milestones(milestones: list[int], recipe_epochs: int, epochs: int) -> list[int]:
    """Keep the lr drops at the same fractions of training (60/120/160 of 200 -> 2/4/5 of 6).

    Drops that would land in the same epoch are pushed one epoch later while there is room
    (each drop must stay a distinct epoch); those that still collide are merged, so a very
    short run has fewer drops - the dry-run prints the drops it will use.
    """
    scaled: list[int] = []
    for m in milestones:
        e = max(1, round(m * epochs / recipe_epochs))
        if scaled and e <= scaled[-1]:
            e = scaled[-1] + 1
        if e < epochs:  # a drop at (or after) the last epoch would change nothing
            scaled.append(e)
    return scaled


@dataclass
class PlannedRun:
    table: str
    run: Run
    seed: int
    model: str  # after --model-scale
    preset: str
    overrides: list[str]
    run_dir: Path
    epochs: int
    milestones: list[int]
    train_images: int
    params: int | None = None
    forward_flops: int | None = None
    budget: Budget = Budget()  # as labelled in run_dir (plan() adds a changed lr schedule)
    passes: int = 1  # forward/backward passes a step: 2 with SAM (its ascent, then its descent)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def train_flops(self) -> int | None:
        if self.forward_flops is None:
            return None
        return TRAIN_FLOPS_PER_FORWARD * self.passes * self.forward_flops * self.train_images * self.epochs

    @property
    def has_checkpoint(self) -> bool:
        """It saved at least one checkpoint (else a resume starts over in its run directory)."""
        return checkpoint.saved_any(self.run_dir)

    def status(self) -> str:
        """finished | resumable | new (what a sweep will do with this run)."""
        if rundir.read_summary(self.run_dir):
            return "finished"
        # fit() wrote config.yaml: it started here. resume=True continues from its newest
        # checkpoint, or starts over in place when it was killed before the first one.
        if (self.run_dir / rundir.CONFIG).is_file() or self.has_checkpoint:
            return "resumable"
        return "new"


def _recipe(preset: str, overrides: list[str]):
    """(the recipe's config with the overrides, its lr schedule when the overrides change it, the
    other overrides that change the recipe as "key=value")."""
    cfg = load_config(preset=preset, overrides=overrides)
    plain = load_config(preset=preset).to_dict()
    changed = cfg.optim.schedule if cfg.optim.schedule != plain["optim"]["schedule"] else None
    changes = []
    unlabelled = RUN_NEUTRAL_KEYS + SPEED_KEYS
    resolved = cfg.to_dict()
    for key in dict.fromkeys(o.split("=", 1)[0].strip() for o in overrides):
        section, _, name = key.partition(".")
        value = resolved[section][name]
        if key != "optim.schedule" and not allowed(unlabelled, key) and value != plain[section][name]:
            changes.append(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return cfg, changed, tuple(changes)


def _train_images(dataset: str, cfg) -> int:
    """Training images a run of ``cfg`` sees (estimates the cost): train (+ extra) - val split."""
    splits = catalog.get(dataset).splits
    return splits["train"] + (splits.get("extra", 0) if cfg.data.use_extra else 0) - cfg.data.val_size


def plan(
    table: Table,
    *,
    out: str | Path,
    seeds: int = 1,
    budget: Budget = Budget(),
    data: str | None = None,
    dataset: str | None = None,
    overrides: tuple[str, ...] = (),
    count: bool = True,
) -> list[PlannedRun]:
    """Every (run, seed) of ``table`` with its run directory, config overrides and cost."""
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be >= 1")
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o:
            raise UserError(f"override {o!r} is not key=value: e.g. accel.precision=bf16")
        fixed = next((hint for k, hint in SWEEP_FIXED_KEYS.items() if allowed((k,), key)), None)
        if fixed:
            raise UserError(f"override {key} would change the runs behind their labels: {fixed}")
    runs = [r for r in table.runs if dataset is None or r.dataset == dataset]
    if not runs:
        raise UserError(f"table {table.name} has no runs on {dataset!r}: choose one of {', '.join(table.datasets())}")
    if data in NUM_CLASSES:  # a dataset name, not a path: the runs' own names already say it
        if any(r.dataset != data for r in runs):
            raise UserError(f"--data {data} does not match table {table.name}'s datasets "
                            f"({', '.join(table.datasets())}): use --dataset {data} to pick its runs")
        data = None
    if data is not None and len({r.dataset for r in runs}) > 1:
        raise UserError(
            f"--data {data} would feed every dataset of table {table.name} "
            f"({', '.join(table.datasets())}): pick one with --dataset"
        )
    _check_distinct(runs, budget)
    row_keys = {o.split("=", 1)[0] for r in runs for o in r.overrides}
    clash = sorted(row_keys & {o.split("=", 1)[0].strip() for o in overrides})
    if clash:
        raise UserError(f"override {clash[0]} is what the rows of table {table.name} change: leave it out")
    recipes: dict[str, tuple] = {}
    planned = []
    for run in runs:
        if run.recipe not in recipes:
            recipes[run.recipe] = _recipe(run.recipe, list(overrides))
        recipe, schedule, changes = recipes[run.recipe]
        recipe_epochs, recipe_milestones = recipe.train.epochs, list(recipe.optim.milestones)
        run_budget = replace(budget, schedule=schedule, changes=changes)
        base = Path(out) / table.name / run_budget.label
        epochs = budget.epochs or recipe_epochs
        # Milestones only mean something to the step schedule.
        milestones = [] if schedule else scale_milestones(recipe_milestones, recipe_epochs, epochs)
        model = scale_model(run.model, budget.model_scale, budget.depth)
        train_images = _train_images(run.dataset, recipe)
        if budget.subset:
            train_images = min(budget.subset, train_images)
        for seed in range(seeds):
            ov = [f"model.name={model}", f"data.name={run.dataset}", f"train.seed={seed}"]
            if data is not None:
                ov.append(f"data.path={os.path.abspath(data)}")
            # Dropout only where the table asks for it: the recipe's default (0.3) is the
            # dropout table's setting, not the other tables'.
            ov.append(f"model.dropout={run.model_kwargs.get('dropout', 0.0)}")
            for key, value in run.model_kwargs.items():
                if key == "dropout":
                    continue
                if isinstance(value, (tuple, list)):
                    value = ",".join(str(v) for v in value)
                ov.append(f"model.{key}={value}")
            if budget.epochs is not None:
                ov.append(f"train.epochs={epochs}")
                if not schedule:
                    ov.append("optim.milestones=" + ",".join(map(str, milestones)))
                if recipe.optim.warmup_epochs:  # a warm-up keeps its fraction of training, like the drops
                    ov.append(f"optim.warmup_epochs={recipe.optim.warmup_epochs * epochs / recipe_epochs:.6g}")
            if budget.subset:
                ov.append(f"data.subset={budget.subset}")
            for o in run.overrides:
                key, _, value = o.partition("=")
                if key == "train.ema" and budget.epochs is not None:
                    o = f"{key}={scale_ema(float(value), recipe_epochs, epochs):.6g}"
                ov.append(o)
            ov += list(overrides)
            sam = dict(o.split("=", 1) for o in ov).get("optim.sam_rho", recipe.optim.sam_rho)
            planned.append(PlannedRun(table.name, run, seed, model, run.recipe, ov,
                                      base / f"{run.id}-seed{seed}", epochs, milestones, train_images,
                                      budget=run_budget, passes=2 if float(sam) else 1))
    if count:
        _count(planned)
    return planned


def _count(planned: list[PlannedRun]) -> None:
    """Params and forward FLOPs of each distinct network, built on the meta device (no memory)."""
    cache: dict[str, tuple[int, int]] = {}
    for p in planned:
        kwargs = {"num_classes": NUM_CLASSES[p.run.dataset], **p.run.model_kwargs}
        key = json.dumps([p.model, kwargs], sort_keys=True)
        if key not in cache:
            cache[key] = model_size(p.model, **kwargs)
        p.params, p.forward_flops = cache[key]


# --- running --------------------------------------------------------------------------------


def write_manifest(table: Table, planned: list[PlannedRun], budget: Budget, command: list[str]) -> Path:
    """sweep.json beside the run directories: what each is, so `wrn report` needs no guessing."""
    budget = planned[0].budget if planned else budget  # as planned: with a changed lr schedule
    path = planned[0].run_dir.parent / "sweep.json"
    manifest = {
        "table": table.name,
        "title": table.title,
        "budget": {"label": budget.label, "full": budget.full, "description": budget.describe(),
                   "epochs": budget.epochs, "subset": budget.subset, "model_scale": budget.model_scale,
                   "depth": budget.depth,
                   "schedule": budget.schedule, "changes": list(budget.changes)},
        "command": command,
        "runs": [
            {"dir": p.name, "id": p.run.id, "label": p.run.label, "seed": p.seed, "model": p.model,
             "paper_model": p.run.model, "dataset": p.run.dataset, "model_kwargs": p.run.model_kwargs,
             "preset": p.preset, "overrides": p.overrides, "epochs": p.epochs, "milestones": p.milestones,
             "params": p.params, "forward_flops": p.forward_flops}
            for p in planned
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(manifest, indent=1, default=list) + "\n").encode())
    return path
