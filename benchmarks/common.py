"""Shared by the benchmark scripts: run `wrn bench ... --json` in a fresh process, keep the JSON,
and format BENCHMARKS.md rows. Each measurement runs in its own process so that one mode's
memory, threads and compile state do not leak into the next."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WRN = [sys.executable, "-m", "wrn"]


def bench(args: list[str], name: str, env: dict[str, str] | None = None) -> dict:
    """Run `wrn bench <args> --json`, save benchmarks/results/<name>.json, return the result."""
    cmd = [*WRN, "bench", *args, "--json"]
    print("+ wrn bench " + shlex.join(args), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    result = json.loads(out.stdout)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return result


def parser(doc: str, *, batch_size: str, steps: str, repeats: str, model: str | None = "wrn-16-4"):
    """The arguments every script takes, passed on to `wrn bench` as they are (strings)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    if model:
        p.add_argument("--model", default=model)
    p.add_argument("--batch-size", default=batch_size)
    p.add_argument("--steps", default=steps)
    p.add_argument("--repeats", default=repeats)
    return p


def accel_overrides(precision: str, channels_last: bool, compile: bool, keep_memory: bool = True,
                    device: str = "cpu") -> list[str]:
    """`wrn bench`'s accel.* overrides for one path (the same keys as `wrn train`)."""
    on = lambda b: str(b).lower()  # noqa: E731
    return [f"accel.device={device}", f"accel.precision={precision}", f"accel.channels_last={on(channels_last)}",
            f"accel.compile={on(compile)}", f"accel.keep_memory={on(keep_memory)}"]


def hardware(result: dict) -> str:
    """The CPU family column: the CPU's model and best ISA, or the GPU's name."""
    m = result["machine"]
    if result["device"] != "cpu":
        return m.get("gpu", result["device"])
    return f"{m['cpu']} ({m.get('isa', '?')})"


def rows(result: dict, label: str = "") -> list[str]:
    """Markdown rows: model | device | CPU/GPU | mode | img/s | ratio to reference | % of peak | memory | command."""
    modes = {m["mode"]: m for m in result["modes"]}
    ref = modes.get("reference")
    out = []
    for m in result["modes"]:
        for what in ("train", "eval"):
            if what not in m:
                continue
            f = m[what]
            ratio = f"{f['img_per_s'] / ref[what]['img_per_s']:.2f}x" if ref and what in ref else "-"
            what_mode = (f"{m['mode']}{' ' + label if label and m['mode'] == 'fast' else ''}: {m['precision']}"
                         f"{', channels_last' if m['channels_last'] else ''}{', compile' if m['compile'] else ''}"
                         f"{', keep memory' if m.get('keep_memory') else ''}"
                         f" ({what})")
            out.append(f"| {result['model']} b{result['settings']['batch_size']} | {result['device']} "
                       f"| {hardware(result)} | {what_mode} "
                       f"| {f['img_per_s']:.1f} ± {f['img_per_s_std']:.1f} | {ratio} | {f['pct_of_peak']:.0f}% "
                       f"of {m['precision'] if m['mode'] == 'fast' else 'fp32'} | {m['peak_memory_mb']:.0f} MB "
                       f"| `{result['command'].replace(' --json', '')}` |")
    return out
