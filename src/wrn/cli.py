"""``wrn`` command line: one subcommand per module in ``wrn.commands``.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can fix (``UserError``, ``ValueError``, missing files) print one line on stderr and
exit 2; ``WRN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import keyword
import os
import sys
import time
from typing import NoReturn

USER_OSERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
COMMANDS = ("info", "train", "eval", "predict", "runs", "bench", "sweep", "report", "export", "import")


class _Parser(argparse.ArgumentParser):
    _intermixed = False

    # argparse's own errors print usage plus a line; keep them to the one line with the fix.
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        # Subcommands take key=value overrides after their options (`wrn eval RUN --data X
        # accel.precision=bf16`): plain argparse fills a command's positionals from one run of
        # words only and rejects later ones, so a subcommand (no subparsers of its own) parses
        # intermixed, which calls this method again for the real work.
        if self._subparsers is not None or self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def build_parser() -> argparse.ArgumentParser:
    from wrn import __version__

    parser = _Parser(prog="wrn", description="Wide Residual Networks: models, training, benchmarks, the paper's study.")
    parser.add_argument("--version", action="version", version=f"wrn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"wrn.commands.{name}" + ("_" if keyword.iskeyword(name) else ""))  # import_
        # argparse %-formats help strings: a literal "%" must be doubled.
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def process_age() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere 0): a budget counts the
    interpreter's start and the imports too, as a user's stopwatch would."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: list[str] | None = None, *, started: float | None = None) -> int:
    """Run one command; its exit status (the tests call this in-process; a Ray task runs `python -m wrn`).
    ``started``: the ``time.perf_counter()`` the command counts its wall time from (default: now)."""
    started = time.perf_counter() if started is None else started
    args = build_parser().parse_args(argv)
    args.started = started
    args.command_line = ["wrn", *(sys.argv[1:] if argv is None else argv)]  # a run records it (provenance)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("wrn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # Of the other OSErrors only the storage ones (disk full, quota, read-only) are the user's to fix.
        if os.environ.get("WRN_DEBUG") or (isinstance(e, OSError) and not isinstance(e, USER_OSERRORS)
                                           and e.errno not in STORAGE_ERRNOS):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
        print(f"wrn: error: {message}", file=sys.stderr)
        return 2


def entry() -> NoReturn:
    """The ``wrn`` program (console script, ``python -m wrn``, ``python -m wrn.cli``): ``main``,
    then exit with its status; a torchrun worker skips the interpreter's teardown
    (``dist.exit_worker``)."""
    status = main(started=time.perf_counter() - process_age())
    from wrn.train import dist  # after the command: `wrn --help` stays quick

    if dist.world()[1] > 1:
        dist.exit_worker(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
