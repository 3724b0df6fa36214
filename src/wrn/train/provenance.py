"""Where a number came from: the machine, the software and the command behind a run or a
benchmark, recorded beside its figures (summary.json, the start record, ``wrn bench --json``) so
that a results table can name the CPU and the code of each number from the records alone."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from wrn.train import hardware


@functools.cache
def checkout() -> tuple[str | None, bool | None]:
    """(the git commit, whether tracked files had uncommitted changes) of the code this process
    runs, None outside a checkout. Read once, at the process's first record (a run's start): a
    checkout changed while a long run trains must not be credited with its summary."""
    commit = _git("rev-parse", "HEAD")
    if not commit or len(commit) != 40:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def command_line(argv: list[str] | None = None) -> str:
    """The command as a shell would take it again (``wrn train ...``; a Python caller's argv)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("wrn", "__main__.py", "cli.py"):
        argv[0] = "wrn"
    return shlex.join(argv)


def _version() -> str | None:
    # The installed distribution's version: wrn/__init__ sits above this module (it imports the trainer).
    try:
        return importlib.metadata.version("wrn")
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The hardware and software that computed a number."""
    info: dict[str, Any] = {**hardware.cpu_info(), "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version(), "wrn": _version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def provenance(command: str | None = None) -> dict[str, Any]:
    """``machine()`` plus the code (git commit, uncommitted changes) and the command line
    (``command``, else this process's own)."""
    commit, dirty = checkout()
    return {**machine(), "git_commit": commit, "git_dirty": dirty, "command": command or command_line()}
