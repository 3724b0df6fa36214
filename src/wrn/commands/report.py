"""`wrn report DIR`: tables, per-table CSV and plots of sweep runs beside the paper's numbers, or
one run's learning curves (curves.png) when DIR is a run directory."""

from __future__ import annotations

import argparse

HELP = "tables vs the paper (median over seeds, ranking agreement, effect sizes), CSV and plots; or a run's curves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="directory holding `wrn sweep` runs (its --out, or a table/budget below it), "
                                    "or one run directory (writes its curves.png)")
    parser.add_argument("--out", default=None, help="where REPORT.md, <table>.csv and plots/ go (default: DIR)")
    parser.add_argument("--no-plots", action="store_true", help="tables and CSV only")
    parser.add_argument("--timing-note", default="as measured",
                        help="label of the time columns, e.g. 'shared 2-core CPU, provisional'")


def run(args: argparse.Namespace) -> int:
    from wrn.experiments.report import write  # lazy: scipy and the paper's tables load only when used

    for path in write(args.dir, args.out, plots=not args.no_plots, timing_note=args.timing_note):
        print(f"wrote {path}")
    return 0
