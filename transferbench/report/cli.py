"""The report commands of `transferbench`: collect, figures, compare, rank, report (and report beyond, report bias).

Each command parses its flags, calls the functions of :mod:`transferbench.report.build` (which a user can call
from Python with the same results) and prints what they wrote."""

from __future__ import annotations

import argparse
from pathlib import Path

# pandas, matplotlib and the report modules load when a command runs, not for `--help`


def _protocol(args: argparse.Namespace):
    from .build import Protocol

    return Protocol(epoch=getattr(args, "epoch", "last"), include_deviating=getattr(args, "include_deviating", False),
                    latest=getattr(args, "latest", False))


def _read_runs(args: argparse.Namespace):
    from .build import read_runs

    return read_runs(args.results, reference_files=args.reference, reference_mode=args.reference_mode,
                     reference_arch=args.reference_arch, source=getattr(args, "source", None),
                     workers=getattr(args, "workers", None), protocol=_protocol(args))


def _print_paths(paths: list[Path]) -> None:
    for path in paths:
        print(path)


def cmd_collect(args: argparse.Namespace) -> int:
    from .build import write_collection
    from .palette import parse_labels

    labels = parse_labels(args.label)
    report_runs = _read_runs(args)
    written = write_collection(args.results, report_runs, source=args.source,
                               allow_incomplete_mean=args.allow_incomplete_mean, labels=labels)
    print(report_runs.summary())
    _print_paths(written)
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .figures import write_figures
    from .palette import parse_labels

    labels = parse_labels(args.label)  # checked before any record is read
    _print_paths(write_figures(_read_runs(args).runs, args.results / "figures", source=args.source, labels=labels))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from .build import compare_with_paper
    from .compare import display_frame, summary

    table, written = compare_with_paper(_read_runs(args).runs, args.out or args.results / "compare",
                                        metric=args.metric, alpha=args.alpha, protocol=_protocol(args))
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(display_frame(table).to_string(index=False))
    print(summary(table))
    _print_paths(written)
    return 0


def cmd_beyond(args: argparse.Namespace) -> int:
    from .build import analyse_predictions
    from .collect import collect
    from .select import check_duplicate_seeds

    runs = check_duplicate_seeds(collect(args.results).runs, getattr(args, "latest", False))
    result, written = analyse_predictions(runs, args.out or args.results / "beyond", min_count=args.min_count)
    print(result.summary())
    _print_paths(written)
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    from .bias_report import bias_report

    report = bias_report(args.results, args.out, identities=args.identity, latest=getattr(args, "latest", False))
    print(report.summary)
    _print_paths(report.paths)
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..bounds import Bounds
    from .build import rank_with_measured

    Bounds(int, low=0).check(args.bootstrap, "--bootstrap")  # before any record is read
    ranking, written = rank_with_measured(args.results, reference_files=args.reference,
                                          reference_mode=args.reference_mode, reference_arch=args.reference_arch,
                                          out=args.out, latest=args.latest, bootstrap=args.bootstrap)
    shown = ranking.table[["task", "arch", "mode", "estimator", "n", "kendall_tau", "spearman_rho", "pick", "regret"]]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3f}".format):
        print(shown.to_string(index=False))
    _print_paths(written)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Every table and figure, then the index page linking them."""
    from .build import write_report
    from .palette import parse_labels

    _print_paths(write_report(args.results, reference_files=args.reference, reference_mode=args.reference_mode,
                              reference_arch=args.reference_arch, source=args.source, min_count=args.min_count,
                              allow_incomplete_mean=args.allow_incomplete_mean, labels=parse_labels(args.label),
                              protocol=_protocol(args)))
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


def _add_protocol(p: argparse.ArgumentParser, *, epoch: bool = True, deviating: bool = True) -> None:
    if epoch:
        p.add_argument("--epoch", choices=("last", "best"), default="last",
                       help="each run's accuracies at its last epoch (default, as the paper's code ends) or the best "
                       "over its evaluated epochs (needs the per-epoch curve; docs/protocol.md#metrics)")
    if deviating:
        p.add_argument("--include-deviating", action="store_true",
                       help="also set runs off the paper's protocol (shortened, bf16, FFCV, --limit, ...) beside the "
                       "paper's, marked † (default: left out there)")
    p.add_argument("--latest", action="store_true",
                   help="a seed repeated under the same protocol counts once, the newest run (default: an error "
                   "naming both runs)")


def _add_labels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", action="append", metavar="KEY=TEXT",
                   help="show method KEY as TEXT in the figures and compact LaTeX tables, e.g. --label "
                   "mine='Our method' (repeatable; default: the display names of "
                   "transferbench/shipped/checkpoints/display_names.yaml)")


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    col = sub.add_parser("collect", help="read every run record into runs.parquet/csv and write leaderboards")
    _add_results(col)
    _add_reference(col)
    col.add_argument(
        "--workers", type=int, help="processes that parse the records (default: the CPU cores, for large stores)"
    )
    _add_labels(col)
    col.add_argument("--allow-incomplete-mean", action="store_true",
                     help="average a row over the tasks it has (default: no mean for a row with a missing task)")
    _add_protocol(col)
    col.set_defaults(func=cmd_collect)

    fig = sub.add_parser("figures", help="draw the figures (PNG and PDF) from the run records")
    _add_results(fig)
    _add_reference(fig)
    _add_labels(fig)
    _add_protocol(fig)
    fig.set_defaults(func=cmd_figures)

    cmp = sub.add_parser("compare", help="our results vs the paper's, per cell, with a seed-noise verdict")
    _add_results(cmp)
    _add_reference(cmp, source=False)
    cmp.add_argument("--metric", default="primary", choices=("primary", "top1", "mean_per_class_acc"))
    cmp.add_argument("--alpha", type=float, default=0.05,
                     help="significance level of each cell's test (Welch's t, or a prediction interval when one "
                          "side has a single seed; default 0.05)")
    cmp.add_argument("--out", type=Path, help="where to write compare.csv/md (default <results>/compare)")
    _add_protocol(cmp)
    cmp.set_defaults(func=cmd_compare)

    rnk = sub.add_parser("rank", help="transferability estimates against measured transfer: Kendall tau, Spearman "
                         "rho (bootstrap intervals), the top pick's regret, per task and mode")
    _add_results(rnk)
    _add_reference(rnk, source=False)
    rnk.add_argument("--bootstrap", type=int, default=1000,
                     help="bootstrap resamples of the checkpoints for the intervals (default 1000)")
    rnk.add_argument("--out", type=Path, help="output folder (default <results>/rank)")
    rnk.add_argument("--latest", action="store_true",
                     help="a seed repeated under the same protocol counts once, the newest run (default: an error)")
    rnk.set_defaults(func=cmd_rank)

    rep = sub.add_parser("report", help="every table and figure, and <results>/report/index.md|html linking them")
    _add_results(rep)
    _add_reference(rep)
    _add_labels(rep)
    rep.add_argument(
        "--min-count",
        type=int,
        default=20,
        help="classes with fewer test samples are left out of the per-class drop summaries (default 20)",
    )
    rep.add_argument("--allow-incomplete-mean", action="store_true",
                     help="average a leaderboard row over the tasks it has (default: no mean for a row with a "
                     "missing task)")
    _add_protocol(rep)
    rep.set_defaults(func=cmd_report)
    rep_sub = rep.add_subparsers(dest="report_cmd", metavar="{beyond,bias}")
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
    bey.add_argument("--latest", action="store_true", default=argparse.SUPPRESS,
                     help="a seed repeated under the same protocol counts once, the newest run (default: an error)")
    bey.set_defaults(func=cmd_beyond)
    bia = rep_sub.add_parser("bias", help="the CelebA bias study: bias amplification, uncertainty, calibration per "
                             "attribute before and after fitted thresholds, dense-only criteria, sample flags, PIEs")
    _add_results(bia, default=argparse.SUPPRESS)
    bia.add_argument("--out", type=Path, help="output folder (default <results>/bias)")
    bia.add_argument("--identity", action="append", metavar="ATTRIBUTE",
                     help="an identity attribute to measure bias towards, e.g. --identity Male (repeatable; default: "
                     "the task card's identity_attributes)")
    bia.add_argument("--latest", action="store_true", default=argparse.SUPPRESS,
                     help="a seed repeated under the same protocol counts once, the newest run (default: an error)")
    bia.set_defaults(func=cmd_bias)
