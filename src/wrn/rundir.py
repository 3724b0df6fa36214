"""The run directory's format, written and read in one place.

    RUN/config.yaml      the resolved config (written first: a directory with it is a run)
    RUN/log.jsonl        one JSON object per line, ``"kind": "start" | "step" | "epoch" | "end" | ...``
    RUN/summary.json     the final numbers, ``"finished": true``
    RUN/curves.png       learning curves (``wrn train`` after fit, ``wrn report RUN``)
    RUN/checkpoint/      the newest checkpoint (``wrn.train.checkpoint`` owns what is inside),
    RUN/.checkpoint.old  the one before it while a new one is swapped in,
    RUN/checkpoints/     every N-th epoch's (train.keep_every)

Readers never fail on a run that is still being written or was killed mid-write: a log line cut
short is skipped, a cut or missing JSON file reads as None.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from wrn.fsio import write_atomic, write_json

CONFIG, LOG, SUMMARY, CURVES = "config.yaml", "log.jsonl", "summary.json", "curves.png"
CHECKPOINT, OLD, KEPT = "checkpoint", ".checkpoint.old", "checkpoints"
STATE = "state.json"  # in each checkpoint directory
IMPORTED = "imported.json"  # marks a run directory made by `wrn import` (never trained here)


# -- log.jsonl --------------------------------------------------------------------------------------

def log_line(record: dict[str, Any]) -> str:
    """One record as its log.jsonl line. JSON has no NaN/inf: a diverged loss is written as null
    rather than as a line no reader can parse."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean) + "\n"


def _lines(run_dir: str | Path) -> list[tuple[str, dict]]:
    """(line, record) of each record in the run's log.jsonl, skipping lines a crash cut short
    (and anything not a record)."""
    try:
        lines = (Path(run_dir) / LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: the rest of the log still counts
        if isinstance(entry, dict):
            records.append((line, entry))
    return records


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of the run's log.jsonl, in order; lines a crash cut short are skipped."""
    return [record for _, record in _lines(run_dir)]


def truncate_log(run_dir: str | Path, step: int) -> None:
    """Drop lines written after the checkpoint a resume starts from (the resumed run writes them
    again), so that a resumed log.jsonl reads like an uninterrupted one."""
    path = Path(run_dir) / LOG
    if not path.exists():
        return
    kept = [line + "\n" for line, record in _lines(run_dir) if record.get("step", 0) <= step]
    write_atomic(path, "".join(kept).encode())


def read_epochs(run_dir: str | Path) -> tuple[list[dict], list[float]]:
    """The ``"kind": "epoch"`` records of the run's log, and the img/s of its step windows."""
    log = read_log(run_dir)
    epochs = [r for r in log if r.get("kind") == "epoch" and isinstance(r.get("epoch"), int)]
    rates = [r["img_per_s"] for r in log if r.get("kind") == "step" and isinstance(r.get("img_per_s"), (int, float))]
    return epochs, rates


def epoch_means(run_dir: str | Path) -> tuple[float | None, float | None]:
    """(mean seconds, mean img/s) of the run's logged epochs, for its summary."""
    epochs, _ = read_epochs(run_dir)
    times = [e["epoch_time_s"] for e in epochs if isinstance(e.get("epoch_time_s"), (int, float))]
    rates = [e["img_per_s"] for e in epochs if isinstance(e.get("img_per_s"), (int, float))]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return mean(times), mean(rates)


def epoch_time(summary: dict, epochs: list[dict], step_rates: list[float]) -> float | None:
    """Seconds per training epoch at a finished run's typical speed: the images of a full epoch
    over the median logged window's img/s. A run paused or sharing its machine for part of the
    time (a suspended job, a busy node) keeps its real speed; the mean over epochs would not.
    Without logged windows, the summary's mean epoch time."""
    images = [e["img_per_s"] * e["epoch_time_s"] for e in epochs
              if isinstance(e.get("img_per_s"), (int, float)) and isinstance(e.get("epoch_time_s"), (int, float))]
    if step_rates and images:
        return max(images) / statistics.median(step_rates)
    return summary.get("epoch_time_s")


# -- config.yaml, summary.json, checkpoints' state ----------------------------------------------------

def read_json(path: str | Path) -> dict | None:
    """A JSON object, or None when the file is missing, cut short or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def read_config(run_dir: str | Path) -> dict:
    """The run's config.yaml as plain data ({} when missing or unreadable): no validation, so a
    listing of many runs reads even those made by another version."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def read_summary(run_dir: str | Path) -> dict | None:
    """summary.json of a finished run, else None."""
    summary = read_json(Path(run_dir) / SUMMARY)
    return summary if summary and summary.get("finished") else None


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    write_json(Path(run_dir) / SUMMARY, summary)


def is_run_dir(path: str | Path) -> bool:
    """A single run's directory (what `wrn train --out` makes), not a directory of runs."""
    return (Path(path) / CONFIG).is_file() and (Path(path) / LOG).is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (with a config.yaml) under ``root``, itself included, sorted; their insides
    and hidden folders are not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if CONFIG in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def newest_state(run_dir: str | Path) -> dict | None:
    """state.json of the newest checkpoint that has one (a resume verifies the files themselves)."""
    run = Path(run_dir)
    kept = sorted((run / KEPT).glob("epoch-[0-9]*"), reverse=True) if (run / KEPT).is_dir() else []
    states = [s for d in (run / CHECKPOINT, run / OLD, *kept)
              if isinstance(s := read_json(d / STATE), dict) and isinstance(s.get("step"), int)]
    return max(states, key=lambda s: s["step"]) if states else None


# -- what `wrn runs` shows ------------------------------------------------------------------------------

def _preset(run: Path, model: str, start: dict[str, Any]) -> str | None:
    """The preset or config name: from a sweep's plan beside the run, else from the command that
    made it (the start record's provenance), else from the default run name `wrn train` gives
    (<preset>-<model>-<date>-<time>, or <preset>-<date>-<time> where a budget chose the model)."""
    sweep = read_json(run.parent / "sweep.json")
    if isinstance(sweep, dict):
        for entry in sweep.get("runs") or []:
            if isinstance(entry, dict) and entry.get("dir") == run.name and entry.get("preset"):
                return f"{entry['preset']} ({sweep.get('table', 'sweep')})"
    command = (start.get("provenance") or {}).get("command")
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError:
            words = []
        for flag in ("--preset", "--config"):
            if flag in words[:-1]:
                value = words[words.index(flag) + 1]
                return value if flag == "--preset" else Path(value).stem
    match = re.fullmatch(rf"(.+)-{re.escape(model)}-\d{{8}}-\d{{6}}", run.name)
    return match.group(1) if match else None


def run_info(run: Path, root: Path) -> dict[str, Any]:
    """What a run directory says about itself: model, data, preset, epochs done of total, final
    accuracies, wall time, and status (finished | failed | interrupted | not started)."""
    cfg = read_config(run)

    def section(name: str) -> dict:
        return cfg.get(name) if isinstance(cfg.get(name), dict) else {}

    model = str(section("model").get("name") or "?")
    data = section("data")
    summary = read_summary(run)
    records = read_log(run)
    state = newest_state(run)
    start = next((r for r in reversed(records) if r.get("kind") in ("start", "resume")), {})
    spe = start.get("steps_per_epoch") or (state or {}).get("steps_per_epoch")
    # A budget fixes the steps after the start record (its warm-up timed): its "budget" record says how many.
    chosen = next((r.get("steps") for r in reversed(records) if r.get("kind") == "budget"), None)
    total_steps = chosen or start.get("total_steps")
    epochs = section("train").get("epochs")
    if spe and total_steps:  # a budget or train.steps may end training before train.epochs
        epochs = total_steps / spe
    # A budget may have trained a narrower WRN than the one the run was named after.
    named = next((r.get("configured") for r in records if r.get("kind") == "budget_model"), None) or model
    info: dict[str, Any] = {
        "run": str(run.relative_to(root)) if run != root else str(run), "model": model,
        "dataset": Path(data["path"]).name if data.get("path") else data.get("name"),
        "preset": _preset(run, str(named), start), "epochs_done": 0, "epochs_total": epochs, "step": None,
        "total_steps": total_steps, "test_acc": None, "val_acc": None,
        "eval_tta": bool(section("train").get("eval_tta")), "wall_time_s": None, "status": "not started",
        "error": None, "init": section("train").get("init"),  # fine-tuned from (wrn train --init)
    }
    try:
        info["log_age_s"] = max(0.0, time.time() - (run / LOG).stat().st_mtime)
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
    imported = read_json(run / IMPORTED)  # wrn import: weights from elsewhere, never trained here
    if isinstance(imported, dict):
        info.update(status="imported", preset=f"imported ({imported.get('layout')})", epochs_done=0, epochs_total=0,
                    source=imported.get("source"))
    return info
