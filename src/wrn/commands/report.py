"""`wrn report DIR`: markdown tables and PNG plots of sweep runs, set beside the paper's numbers."""

from __future__ import annotations

import argparse

HELP = "tables (ours vs the paper's, median over seeds, ranking agreement) and plots from sweep runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="directory holding `wrn sweep` runs (its --out, or a table/budget below it)")
    parser.add_argument("--out", default=None, help="where REPORT.md and plots/ go (default: DIR)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--timing-note", default="as measured",
                        help="label of the time columns, e.g. 'shared 2-core CPU, provisional'")


def run(args: argparse.Namespace) -> int:
    from wrn.experiments.report import write_report

    path = write_report(args.dir, args.out, plots=not args.no_plots, timing_note=args.timing_note)
    print(f"wrote {path}")
    return 0
