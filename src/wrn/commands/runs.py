"""`wrn runs [DIR]`: the runs under a directory, how far each got and whether it can be resumed.

A run directory is one with a config.yaml (``engine.fit`` writes it first). Its status:

- finished: summary.json says so (test and val accuracy come from there; "+flip" marks those
  evaluated with flip test-time augmentation, train.eval_tta);
- failed: log.jsonl's last record of a start or a failure is ``"kind": "error"`` (the error shown);
- interrupted at step N: a checkpoint holds step N, so ``wrn train --resume DIR`` continues it;
- not started: no checkpoint yet (a resume starts it over in place).

Nothing marks a run as live, so an unfinished run whose log.jsonl changed in the last few minutes
is flagged "running?" rather than offered for a resume that would race it.

Reads only the small JSON/YAML files: never the weights, so listing many big runs stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "list the runs under a directory: model, epochs done, final accuracy, wall time, status"
RECENT_S = 300  # a log written this recently may belong to a run still training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                        help="where to look, recursively (default: runs)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per run")


def _number(x: float | None) -> str:
    return "?" if x is None else f"{x:g}" if float(x).is_integer() else f"{x:.1f}"


def _status(info: dict[str, Any]) -> str:
    if info["status"] == "failed":
        return f"failed at step {info['step']}: {info['error']}"
    if info["status"] == "finished":
        return "finished"
    if info["status"] == "imported":
        return f"imported from {info['source']}"
    age = info["log_age_s"]
    if age is not None and age < RECENT_S:
        where = f"at step {info['step']}" if info["status"] == "interrupted" else "before its first checkpoint"
        return f"running? (log written {age:.0f}s ago; {where})"
    return f"interrupted at step {info['step']} (resumable)" if info["status"] == "interrupted" else info["status"]


def format_table(infos: list[dict[str, Any]]) -> str:
    from wrn.units import format_clock

    def pct(x: float | None, flip: bool) -> str:  # "+flip": evaluated with flip test-time augmentation
        return "-" if x is None else f"{100 * x:.2f}%" + ("+flip" if flip else "")

    header = ("run", "model", "data", "preset", "epochs", "test", "val", "time", "status")
    rows = [(i["run"], i["model"], i["dataset"] or "-", i["preset"] or "-",
             f"{_number(i['epochs_done'])}/{_number(i['epochs_total'])}", pct(i["test_acc"], i["eval_tta"]),
             pct(i["val_acc"], i["eval_tta"]),
             format_clock(i["wall_time_s"]), _status(i) + (f" (fine-tuned from {i['init']})" if i.get("init") else ""))
            for i in infos]
    widths = [max(len(str(r[c])) for r in (header, *rows)) for c in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in (header, *rows))


def run(args: argparse.Namespace) -> int:
    from wrn.errors import UserError
    from wrn.rundir import find_runs, run_info

    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"{args.dir}: no such directory: give the folder your runs are in (wrn train --out DIR)")
    infos = [run_info(r, root) for r in find_runs(root)]
    if args.json:
        print(json.dumps(infos, indent=1))
    elif not infos:
        print(f"no runs under {root} (a run directory holds a config.yaml)")
    else:
        print(format_table(infos))
    return 0
