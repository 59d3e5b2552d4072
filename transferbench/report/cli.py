"""The report commands of `transferbench`: collect, figures."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_collect(args: argparse.Namespace) -> int:
    from . import collect, write_leaderboards

    collection = collect(args.results)
    written = collection.write(args.results)
    written += write_leaderboards(collection.runs, args.results / "leaderboards")
    print(collection.summary())
    for path in written:
        print(path)
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from . import collect, write_figures

    for path in write_figures(collect(args.results).runs, args.results / "figures"):
        print(path)
    return 0


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    col = sub.add_parser("collect", help="read every run record into runs.parquet/csv and write leaderboards")
    col.add_argument("--results", type=Path, default=Path("results"), help="results root (default results/)")
    col.set_defaults(func=cmd_collect)
    fig = sub.add_parser("figures", help="draw the figures (PNG and PDF) from the run records")
    fig.add_argument("--results", type=Path, default=Path("results"), help="results root (default results/)")
    fig.set_defaults(func=cmd_figures)
