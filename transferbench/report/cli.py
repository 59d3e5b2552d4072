"""The report commands of `transferbench`: collect, figures, compare, report (and report beyond)."""

from __future__ import annotations

import argparse
import io
import shlex
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes
from ..errors import TransferbenchError
from .select import PAPER, source_of

REFERENCE_FILE = "reference.parquet"  # the paper's rows as imported by `collect --reference`, reused later


def _reference(args: argparse.Namespace) -> pd.DataFrame | None:
    """The paper's rows: from --reference files, else from a previous `collect --reference`, else None."""
    from .reference import read_references

    if args.reference:
        return read_references([p for group in args.reference for p in group], args.reference_mode, args.reference_arch)
    saved = args.results / REFERENCE_FILE
    if not saved.is_file():
        return None
    try:
        return pd.read_parquet(saved)
    except OSError as exc:  # unreadable (permissions) or not Parquet at all (pyarrow raises OSError subclasses)
        raise TransferbenchError(f"cannot read {saved}, the paper's results saved by `collect --reference`: "
                                 f"{' '.join(str(exc).split())}; delete it and rerun `transferbench collect "
                                 "--reference FILE...`, or pass --reference") from None
    except ValueError as exc:
        raise TransferbenchError(f"{saved} is not a readable Parquet file ({' '.join(str(exc).split())}); delete "
                                 "it and rerun `transferbench collect --reference FILE...`, or pass --reference"
                                 ) from None


def _runs(args: argparse.Namespace):
    """(collection of our runs, every row to report on: ours plus the paper's, reference or None)."""
    from . import collect

    collection = collect(args.results, workers=getattr(args, "workers", None))
    reference = _reference(args)
    runs = collection.runs if reference is None else pd.concat([collection.runs, reference], ignore_index=True)
    source = getattr(args, "source", None)
    if source in ("paper", "both") and reference is None:
        raise TransferbenchError(
            f"--source {source} needs the paper's results: pass --reference FILE... (the "
            "paper's raw_results/*.txt) or run `transferbench collect --reference ...` first"
        )
    if source == "ours" and collection.runs.empty:
        raise TransferbenchError(f"--source ours: no completed runs under {args.results} (--results)")
    return collection, runs, reference


def _reference_flags(args: argparse.Namespace, source: bool = True) -> str:
    parts = []
    for group in args.reference or []:
        parts += ["--reference", *map(str, group)]
    for flag in ("reference_mode", "reference_arch", *(["source"] if source else [])):
        if getattr(args, flag, None):
            parts += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def command_line(name: str, args: argparse.Namespace, *extra: str) -> str:
    """The command that reproduces this step, as it would be typed."""
    text = f"transferbench {name} --results {shlex.quote(str(args.results))}"
    flags = _reference_flags(args, source=name != "compare")
    return " ".join(p for p in (text, flags, *extra) if p)


def do_collect(args: argparse.Namespace) -> tuple[list[Path], str, pd.DataFrame, pd.DataFrame | None]:
    """Write runs.*, reference.* (with --reference) and the leaderboards; return (files, summary, every row to
    report on, the paper's rows or None)."""
    from . import write_leaderboards

    collection, runs, reference = _runs(args)
    written = collection.write(args.results)
    if reference is not None and args.reference:
        buf = io.BytesIO()
        reference.to_parquet(buf, index=False)
        written.append(write_bytes(args.results / REFERENCE_FILE, buf.getvalue()))
        written.append(write_bytes(args.results / "reference.csv", reference.to_csv(index=False).encode()))
    written += write_leaderboards(runs, args.results / "leaderboards", source=args.source,
                                  allow_incomplete_mean=getattr(args, "allow_incomplete_mean", False))
    summary = collection.summary()
    if reference is not None:
        summary += f"; {len(reference)} paper result(s)"
    return written, summary, runs, reference


def cmd_collect(args: argparse.Namespace) -> int:
    written, summary, _, _ = do_collect(args)
    print(summary)
    for path in written:
        print(path)
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from . import write_figures

    _, runs, _ = _runs(args)
    for path in write_figures(runs, args.results / "figures", source=args.source):
        print(path)
    return 0


def do_compare(args: argparse.Namespace, runs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[Path]]:
    from .compare import compare, write_compare

    if runs is None:
        _, runs, reference = _runs(args)
    else:
        reference = runs if (source_of(runs) == PAPER).any() else None
    if reference is None:
        raise TransferbenchError(
            "compare needs the paper's results: pass --reference FILE... (the paper's "
            "raw_results/*.txt) or run `transferbench collect --reference ...` first"
        )
    table = compare(runs, metric=args.metric, alpha=args.alpha)
    return table, write_compare(table, args.out or args.results / "compare")


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import display_frame, summary

    table, written = do_compare(args)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(display_frame(table).to_string(index=False))
    print(summary(table))
    for path in written:
        print(path)
    return 0


def do_beyond(args: argparse.Namespace, runs: pd.DataFrame | None = None):
    from . import collect
    from .predictions import beyond, write_beyond

    if runs is None:
        runs = collect(args.results).runs
    result = beyond(runs, min_count=args.min_count)
    return result, write_beyond(result, getattr(args, "out", None) or args.results / "beyond")


def cmd_beyond(args: argparse.Namespace) -> int:
    result, written = do_beyond(args)
    print(result.summary())
    for path in written:
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Every table and figure, then the index page linking them."""
    from . import write_figures
    from .index import Section, run_versions, write_index

    sections = []
    written, summary, runs, reference = do_collect(args)
    incomplete = ["--allow-incomplete-mean"] if args.allow_incomplete_mean else []
    boards = [p for p in written if p.suffix == ".md" and p.parent.name == "leaderboards"]
    sections.append(Section("Collected runs and leaderboards", command_line("collect", args, *incomplete),
                            files=written, inline=boards))
    figures = write_figures(runs, args.results / "figures", source=args.source)
    sections.append(Section("Figures", command_line("figures", args), files=figures))
    if reference is not None:
        from .compare import summary as compare_summary

        try:
            table, cmp_files = do_compare(
                argparse.Namespace(results=args.results, out=None, metric="primary", alpha=0.05), runs
            )
            sections.append(
                Section(
                    "Ours vs the paper",
                    command_line("compare", args),
                    files=cmp_files,
                    tables=[p for p in cmp_files if p.suffix == ".csv"],
                    text=compare_summary(table),
                )
            )
        except TransferbenchError as exc:  # e.g. no runs of ours yet: the rest of the report still stands
            sections.append(Section("Ours vs the paper", command_line("compare", args), text=f"not done: {exc}"))
    result, beyond_files = do_beyond(argparse.Namespace(results=args.results, min_count=args.min_count, out=None), runs)
    sections.append(
        Section(
            "Beyond accuracy",
            f"transferbench report beyond --results {shlex.quote(str(args.results))} --min-count {args.min_count}",
            files=beyond_files,
            tables=[args.results / "beyond" / "beyond.csv"],
            text=result.summary(),
        )
    )
    index = write_index(
        args.results / "report",
        command_line("report", args, f"--min-count {args.min_count}", *incomplete),
        sections,
        summary=summary,
        record_versions=run_versions(runs),
    )
    for path in index:
        print(path)
    return 0


def _add_results(p: argparse.ArgumentParser, default=Path("results")) -> None:
    p.add_argument("--results", type=Path, default=default, help="results root (default results/)")


def _add_reference(p: argparse.ArgumentParser, source: bool = True) -> None:
    p.add_argument(
        "--reference",
        action="append",
        nargs="+",
        metavar="FILE",
        help="the paper's per-seed result files (raw_results/*.txt of IST-DASLab/sparse-imagenet-"
        "transfer); mode and architecture are read from the file names",
    )
    p.add_argument(
        "--reference-mode",
        choices=("linear", "full"),
        help="mode of every --reference file, when their names do not say",
    )
    p.add_argument(
        "--reference-arch",
        choices=("resnet50", "mobilenet"),
        help="architecture of every --reference file, when their names do not say",
    )
    if source:
        p.add_argument(
            "--source",
            choices=("ours", "paper", "both"),
            help="our runs, the paper's, or both side "
            "by side (default: both when the paper's results are given, else ours)",
        )


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    col = sub.add_parser("collect", help="read every run record into runs.parquet/csv and write leaderboards")
    _add_results(col)
    _add_reference(col)
    col.add_argument(
        "--workers", type=int, help="processes that parse the records (default: the CPU cores, for large stores)"
    )
    col.add_argument("--allow-incomplete-mean", action="store_true",
                     help="average a row over the tasks it has (default: no mean for a row with a missing task)")
    col.set_defaults(func=cmd_collect)

    fig = sub.add_parser("figures", help="draw the figures (PNG and PDF) from the run records")
    _add_results(fig)
    _add_reference(fig)
    fig.set_defaults(func=cmd_figures)

    cmp = sub.add_parser("compare", help="our results vs the paper's, per cell, with a seed-noise verdict")
    _add_results(cmp)
    _add_reference(cmp, source=False)
    cmp.add_argument("--metric", default="primary", choices=("primary", "top1", "mean_per_class_acc"))
    cmp.add_argument("--alpha", type=float, default=0.05,
                     help="significance level of each cell's test (Welch's t, or a prediction interval when one "
                          "side has a single seed; default 0.05)")
    cmp.add_argument("--out", type=Path, help="where to write compare.csv/md (default <results>/compare)")
    cmp.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="every table and figure, and <results>/report/index.md|html linking them")
    _add_results(rep)
    _add_reference(rep)
    rep.add_argument(
        "--min-count",
        type=int,
        default=20,
        help="classes with fewer test samples are left out of the per-class drop summaries (default 20)",
    )
    rep.add_argument("--allow-incomplete-mean", action="store_true",
                     help="average a leaderboard row over the tasks it has (default: no mean for a row with a "
                     "missing task)")
    rep.set_defaults(func=cmd_report, workers=None)
    rep_sub = rep.add_subparsers(dest="report_cmd", metavar="{beyond}")
    bey = rep_sub.add_parser(
        "beyond",
        help="churn, calibration, entropy, per-class drops and pruning-identified "
        "exemplars of every sparse run against its dense partner",
    )
    _add_results(bey, default=argparse.SUPPRESS)  # `report --results X beyond` and `report beyond --results X`
    bey.add_argument(
        "--min-count",
        type=int,
        default=argparse.SUPPRESS,
        help="classes with fewer test samples are left out of the per-class drop summaries (default 20)",
    )
    bey.add_argument("--out", type=Path, help="output folder (default <results>/beyond)")
    bey.set_defaults(func=cmd_beyond)
