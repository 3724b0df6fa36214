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
import os
import re
import time
from pathlib import Path
from typing import Any

HELP = "list the runs under a directory: model, epochs done, final accuracy, wall time, status"
RECENT_S = 300  # a log written this recently may belong to a run still training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                        help="where to look, recursively (default: runs)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per run")


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself included), sorted; their insides are not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log(run: Path) -> list[dict]:
    records = []
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _newest_state(run: Path) -> dict | None:
    """state.json of the newest checkpoint that has one (a resume verifies the files themselves)."""
    from wrn.train.checkpoint import CHECKPOINT, KEPT, OLD

    kept = sorted((run / KEPT).glob("epoch-[0-9]*"), reverse=True) if (run / KEPT).is_dir() else []
    states = [s for d in (run / CHECKPOINT, run / OLD, *kept)
              if isinstance(s := _json(d / "state.json"), dict) and isinstance(s.get("step"), int)]
    return max(states, key=lambda s: s["step"]) if states else None


def _preset(run: Path, model: str) -> str | None:
    """The preset or config name: from a sweep's plan beside the run, else from the default run
    name `wrn train` gives (<preset>-<model>-<date>-<time>)."""
    sweep = _json(run.parent / "sweep.json")
    if isinstance(sweep, dict):
        for entry in sweep.get("runs") or []:
            if isinstance(entry, dict) and entry.get("dir") == run.name and entry.get("preset"):
                return f"{entry['preset']} ({sweep.get('table', 'sweep')})"
    match = re.fullmatch(rf"(.+)-{re.escape(model)}-\d{{8}}-\d{{6}}", run.name)
    return match.group(1) if match else None


def run_info(run: Path, root: Path) -> dict[str, Any]:
    import yaml

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}

    def section(name: str) -> dict:
        return cfg.get(name) if isinstance(cfg, dict) and isinstance(cfg.get(name), dict) else {}

    model = str(section("model").get("name") or "?")
    data = section("data")
    summary = _json(run / "summary.json")
    summary = summary if isinstance(summary, dict) and summary.get("finished") else None
    records = _log(run)
    state = _newest_state(run)
    start = next((r for r in reversed(records) if r.get("kind") in ("start", "resume")), {})
    spe = start.get("steps_per_epoch") or (state or {}).get("steps_per_epoch")
    total_steps = start.get("total_steps")
    epochs = section("train").get("epochs")
    if spe and total_steps:  # a budget or train.steps may end training before train.epochs
        epochs = total_steps / spe
    # A budget may have trained a narrower WRN than the one the run was named after.
    named = next((r.get("configured") for r in records if r.get("kind") == "budget_model"), None) or model
    info: dict[str, Any] = {
        "run": str(run.relative_to(root)) if run != root else str(run), "model": model,
        "dataset": Path(data["path"]).name if data.get("path") else data.get("name"),
        "preset": _preset(run, str(named)), "epochs_done": 0, "epochs_total": epochs, "step": None,
        "total_steps": total_steps, "test_acc": None, "val_acc": None,
        "eval_tta": bool(section("train").get("eval_tta")), "wall_time_s": None, "status": "not started",
        "error": None,
    }
    try:
        info["log_age_s"] = max(0.0, time.time() - (run / "log.jsonl").stat().st_mtime)
    except OSError:
        info["log_age_s"] = None
    elapsed = [r["elapsed_s"] for r in records if isinstance(r.get("elapsed_s"), (int, float))]
    info["wall_time_s"] = elapsed[-1] if elapsed else (state or {}).get("elapsed_s")
    if state:
        info["step"] = state["step"]
        info["epochs_done"] = state["step"] / spe if spe else state.get("epoch", 0)
    last = next((r for r in reversed(records) if r.get("kind") in ("start", "resume", "error")), {})
    if summary:
        info.update(status="finished", epochs_done=summary.get("epochs", epochs), step=summary.get("steps"),
                    test_acc=summary.get("test_acc"), val_acc=summary.get("val_acc"),
                    wall_time_s=summary.get("wall_time_s"))
    elif last.get("kind") == "error":
        info.update(status="failed", error=str(last.get("error") or "error"), step=last.get("step", info["step"]))
    elif state:
        info["status"] = "interrupted"
    imported = _json(run / "imported.json")  # wrn import: weights from elsewhere, never trained here
    if isinstance(imported, dict):
        info.update(status="imported", preset=f"imported ({imported.get('layout')})", epochs_done=0, epochs_total=0,
                    source=imported.get("source"))
    return info


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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
    def pct(x: float | None, flip: bool) -> str:  # "+flip": evaluated with flip test-time augmentation
        return "-" if x is None else f"{100 * x:.2f}%" + ("+flip" if flip else "")

    header = ("run", "model", "data", "preset", "epochs", "test", "val", "time", "status")
    rows = [(i["run"], i["model"], i["dataset"] or "-", i["preset"] or "-",
             f"{_number(i['epochs_done'])}/{_number(i['epochs_total'])}", pct(i["test_acc"], i["eval_tta"]),
             pct(i["val_acc"], i["eval_tta"]),
             _duration(i["wall_time_s"]), _status(i)) for i in infos]
    widths = [max(len(str(r[c])) for r in (header, *rows)) for c in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in (header, *rows))


def run(args: argparse.Namespace) -> int:
    from wrn.errors import UserError

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
