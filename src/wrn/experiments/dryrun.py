"""What `wrn sweep --dry-run` prints before a sweep: one line per network (seeds folded) with its
params beside the paper's, and the cost estimate, at a CPU speed measured from the sweep's
finished runs where it has any (``cpu_tflops``)."""

from __future__ import annotations

from wrn import rundir
from wrn.experiments.paper import Table
from wrn.experiments.sweep import DEFAULT_CPU_TFLOPS, H100_TFLOPS, TRAIN_FLOPS_PER_FORWARD, Budget, PlannedRun
from wrn.models.wide_resnet import parse_wrn
from wrn.units import format_duration


def _fmt_params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.3f}M"


def _blocks_per_group(model: str) -> str:
    """N = (depth - 4) / 6 of a WRN name (the paper's naming, whatever the block); "-" otherwise."""
    wrn = parse_wrn(model)
    return str((wrn[0] - 4) // 6) if wrn else "-"


def cpu_tflops(planned: list[PlannedRun], given: float | None = None) -> tuple[float, str]:
    """(sustained training TFLOP/s for the CPU time estimates, where the figure comes from):
    ``given`` (--tflops), else as fast as the sweep's finished runs trained (their typical time
    per epoch, so pauses do not count), else the assumed DEFAULT_CPU_TFLOPS."""
    if given:
        return given, "--tflops"
    flops = seconds = 0.0
    runs = 0
    for p in planned:
        summary = rundir.read_summary(p.run_dir) if p.train_flops else None
        if not summary:
            continue
        t = rundir.epoch_time(summary, *rundir.read_epochs(p.run_dir))
        if t:
            flops, seconds, runs = flops + p.train_flops, seconds + t * p.epochs, runs + 1
    if runs:
        return flops / seconds / 1e12, f"as the {runs} finished run{'s' if runs > 1 else ''} here trained; --tflops to set"
    return DEFAULT_CPU_TFLOPS, "assumed: a 2-core AVX2 EPYC; --tflops to set"


def format_plan(table: Table, planned: list[PlannedRun], budget: Budget, *, tflops: float,
                tflops_source: str = "--tflops") -> str:
    """The dry-run listing: one line per network (seeds folded), with params next to the paper's."""
    budget = planned[0].budget if planned else budget  # as planned: with a changed lr schedule
    seeds = sorted({p.seed for p in planned})
    first = [p for p in planned if p.seed == seeds[0]]
    lines = [
        f"{table.name}: {table.title}",
        f"paper's claim: {table.claim}",
        f"budget: {budget.describe()}",
        f"seeds: {len(seeds)}   runs: {len(planned)}   out: {planned[0].run_dir.parent}",
        f"cost: train FLOPs = {TRAIN_FLOPS_PER_FORWARD} x forward FLOPs x images x epochs (x 2 with SAM); time at "
        f"{tflops:.2g} TFLOP/s sustained on the CPU ({tflops_source}) and at {H100_TFLOPS:g} TFLOP/s (one H100, bf16; "
        "a lower bound for small nets, which do not fill the GPU)",
        "",
    ]
    header = ["run", "dataset", "model", "block", "N", "epochs", "images", "params", "paper params",
              "fwd GFLOP", "train PFLOP", "CPU time", "H100 time", "status"]
    rows = []
    total_flops = 0
    for p in first:
        flops = p.train_flops
        total_flops += (flops or 0) * len(seeds)
        block = p.run.model_kwargs.get("block")
        rows.append([
            p.run.label, p.run.dataset, p.model,
            ",".join(map(str, block)) if block else ("3,3" if p.model.startswith("wrn-") else "-"),
            str(p.run.model_kwargs.get("blocks_per_group") or _blocks_per_group(p.model)),
            str(p.epochs), str(p.train_images), _fmt_params(p.params),
            f"{p.run.paper_params_m:g}M" if p.run.paper_params_m else "-",
            "?" if p.forward_flops is None else f"{p.forward_flops / 1e9:.2f}",
            "?" if flops is None else f"{flops / 1e15:.3f}",
            "?" if flops is None else format_duration(flops / (tflops * 1e12)),
            "?" if flops is None else format_duration(flops / (H100_TFLOPS * 1e12)),
            "/".join(sorted({q.status() for q in planned if q.run is p.run})),
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append("")
    cpu, gpu = (format_duration(total_flops / (t * 1e12)) for t in (tflops, H100_TFLOPS))
    lines.append(f"total: {len(planned)} runs, {total_flops / 1e15:.3f} PFLOP: ~{cpu} on the CPU, ~{gpu} on one H100"
                 .replace("~<", "<"))
    left = [p for p in planned if p.status() != "finished"]
    if len(left) < len(planned):
        left_flops = sum(p.train_flops or 0 for p in left)
        lines.append(f"left: {len(left)} runs not finished, ~{format_duration(left_flops / (tflops * 1e12))} "
                     "on the CPU".replace("~<", "<"))
    if planned and planned[0].epochs and first[0].milestones:
        lines.append(f"lr drops at epochs {', '.join(map(str, first[0].milestones))} of {first[0].epochs}")
    return "\n".join(lines)
