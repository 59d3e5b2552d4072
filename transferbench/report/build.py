"""The report pipeline as plain functions: what ``transferbench report`` (and ``collect``, ``figures``, ``compare``,
``report beyond``) does, callable from Python with the same results.

    from transferbench.report import write_report

    write_report(Path("results"), reference_files=["raw_results/linear_transfer_results.txt"])

:func:`write_report` reads our runs and the paper's (:func:`read_runs`), writes the collected tables and the
leaderboards (:func:`write_collection`), the figures (:func:`~transferbench.report.figures.write_figures`), ours
against the paper's (:func:`compare_with_paper`, when the paper's results are there) and the comparison of each
sparse run's test predictions with its dense partner's (:func:`analyse_predictions`), then the index page that
links them, with the command that reproduces each step.

The paper's results come from ``reference_files`` (its ``raw_results/*.txt``) or, when none are given, from
``<results>/reference.parquet``, which :func:`write_collection` saves when they are.

Every step takes the protocol choices of :class:`Protocol`: which epoch's accuracies (``--epoch last|best``),
whether runs of ours off the paper's protocol stand beside the paper's (``--include-deviating``; by default they
are left out there, and marked † when included) and whether a seed repeated under one protocol is an error or the
newest counts (``--latest``).
"""

from __future__ import annotations

import io
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes
from ..errors import TransferbenchError
from ..tasks import is_multilabel
from .bias import OUT_DIR as BIAS_DIR
from .collect import Collection, collect
from .compare import compare, write_compare
from .compare import summary as compare_summary
from .figures import write_figures
from .index import Section, run_versions, write_index
from .leaderboard_files import write_leaderboards
from .low_data import write_low_data_tables
from .prediction_metrics import MIN_COUNT
from .predictions import Beyond, beyond, write_beyond
from .rank import Ranking
from .reference import read_references
from .select import PAPER, check_duplicate_seeds, exclude_deviating, source_of

REFERENCE_FILE = "reference.parquet"  # the paper's rows as imported by `collect --reference`, reused later
PAPER_NEEDED = ("pass --reference FILE... (the paper's raw_results/*.txt) or run `transferbench collect "
                "--reference ...` first")

PathText = str | os.PathLike
# The paper's files: a flat list, or one list per `--reference` flag (the grouping only shapes the commands shown)
ReferenceFiles = Sequence[PathText | Sequence[PathText]]


@dataclass(frozen=True)
class Protocol:
    """How a report treats the protocol of our runs (``--epoch``, ``--include-deviating``, ``--latest``)."""

    epoch: str = "last"  # the accuracies of each run's last epoch, or the best over its evaluated epochs
    include_deviating: bool = False  # keep runs off the paper's protocol beside the paper's (marked †)
    latest: bool = False  # a seed repeated under one protocol: the newest counts (default: an error)

    def flags(self) -> list[str]:
        """The command-line flags that reproduce these choices."""
        return ([f"--epoch {self.epoch}"] if self.epoch != "last" else []) + \
            (["--include-deviating"] if self.include_deviating else []) + (["--latest"] if self.latest else [])


@dataclass(frozen=True)
class ReportRuns:
    """Every row a report is made of: our runs as collected, and the paper's rows where there are any."""

    collection: Collection  # our runs, and the runs without a usable record
    runs: pd.DataFrame  # every row to report on: ours, then the paper's
    reference: pd.DataFrame | None  # the paper's rows; None when none were given or saved
    reference_read: bool = False  # the paper's rows were read from reference files now (not a saved table)

    def summary(self) -> str:
        """One line: how many runs were collected (and failed), and how many paper results came with them."""
        text = self.collection.summary()
        if self.reference is not None:
            text += f"; {len(self.reference)} paper result(s)"
        return text


def reference_groups(reference_files: ReferenceFiles | None) -> list[list[str]]:
    """``reference_files`` as the files of each ``--reference`` flag: a flat list is one flag."""
    if not reference_files:
        return []
    if all(isinstance(item, (str, os.PathLike)) for item in reference_files):
        return [[str(item) for item in reference_files]]
    return [[str(item)] if isinstance(item, (str, os.PathLike)) else [str(p) for p in item]
            for item in reference_files]


def load_reference(results: Path, reference_files: ReferenceFiles | None = None, reference_mode: str | None = None,
                   reference_arch: str | None = None) -> pd.DataFrame | None:
    """The paper's rows: from ``reference_files``, else from a previous ``collect --reference``
    (``<results>/reference.parquet``), else None."""
    if reference_files:
        files = [p for group in reference_groups(reference_files) for p in group]
        return read_references(files, reference_mode, reference_arch)
    saved = Path(results) / REFERENCE_FILE
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


def read_runs(results: Path, *, reference_files: ReferenceFiles | None = None, reference_mode: str | None = None,
              reference_arch: str | None = None, source: str | None = None,
              workers: int | None = None, protocol: Protocol = Protocol()) -> ReportRuns:
    """Our runs under ``results`` (read with ``workers`` processes) and the paper's (:func:`load_reference`).

    ``source`` (``ours``, ``paper``, ``both`` or None) is checked against what there is: ``paper`` and ``both``
    need the paper's results, ``ours`` at least one completed run of ours. ``protocol``: see :class:`Protocol`;
    ``runs`` leaves out our runs off the paper's protocol where the paper has the same cell, unless
    ``protocol.include_deviating`` (``collection.runs`` keeps every run)."""
    results = Path(results)
    reference = load_reference(results, reference_files, reference_mode, reference_arch)
    # with the paper's results, a root without runs is fine: the paper's own leaderboards before any run
    collection = collect(results, workers=workers, missing_ok=reference is not None, epoch=protocol.epoch)
    ours = check_duplicate_seeds(collection.runs, protocol.latest)
    ours = ours[~ours["task"].map(is_multilabel)] if len(ours) else ours  # a study's tasks: `report bias`
    if reference is None:
        runs = ours
    else:
        ours = exclude_deviating(ours, protocol.include_deviating, "the tables beside the paper's", beside=reference)
        runs = pd.concat([ours, reference], ignore_index=True)
    runs.attrs["epoch"] = protocol.epoch
    if source in ("paper", "both") and reference is None:
        raise TransferbenchError(f"--source {source} needs the paper's results: {PAPER_NEEDED}")
    if source == "ours" and collection.runs.empty:
        raise TransferbenchError(f"--source ours: no completed runs under {results} (--results)")
    return ReportRuns(collection, runs, reference, reference_read=bool(reference_files))


def write_collection(results: Path, report_runs: ReportRuns, *, source: str | None = None,
                     allow_incomplete_mean: bool = False, labels: Mapping[str, str] | None = None) -> list[Path]:
    """``runs.*`` and ``failed.csv``, ``reference.*`` (when the paper's rows were read from files now) and the
    leaderboards under ``<results>/leaderboards``; returns the files written."""
    results = Path(results)
    written = report_runs.collection.write(results)
    reference = report_runs.reference
    if reference is not None and report_runs.reference_read:
        buf = io.BytesIO()
        reference.to_parquet(buf, index=False)
        written.append(write_bytes(results / REFERENCE_FILE, buf.getvalue()))
        written.append(write_bytes(results / "reference.csv", reference.to_csv(index=False).encode()))
    written += write_leaderboards(report_runs.runs, results / "leaderboards", source=source,
                                  allow_incomplete_mean=allow_incomplete_mean, labels=dict(labels or {}))
    written += write_low_data_tables(report_runs.collection.runs, results / "leaderboards")  # every size of ours
    return written


def compare_with_paper(runs: pd.DataFrame, out_dir: Path, *, metric: str = "primary",
                       alpha: float = 0.05, protocol: Protocol = Protocol()) -> tuple[pd.DataFrame, list[Path]]:
    """Our results against the paper's, per cell (:func:`~transferbench.report.compare.compare`), written to
    ``out_dir``; ``runs`` must hold the paper's rows. Returns (the table, the files written)."""
    if not (source_of(runs) == PAPER).any():
        raise TransferbenchError(f"compare needs the paper's results: {PAPER_NEEDED}")
    table = compare(runs, metric=metric, alpha=alpha, include_deviating=protocol.include_deviating,
                    latest=protocol.latest)
    return table, write_compare(table, out_dir)


def analyse_predictions(runs: pd.DataFrame, out_dir: Path, *,
                        min_count: int = MIN_COUNT) -> tuple[Beyond, list[Path]]:
    """Each sparse run's test predictions against its dense partner's (churn, calibration, entropy, per-class
    drops, pruning-identified exemplars), written to ``out_dir``; classes with fewer than ``min_count`` test samples
    are left out of the per-class drop summaries. Returns (the analysis, the files written)."""
    result = beyond(runs, min_count=min_count)
    return result, write_beyond(result, out_dir)


@dataclass(frozen=True)
class StepCommands:
    """The ``transferbench`` command lines that reproduce each step of a report, as they would be typed."""

    results: Path
    reference_groups: list[list[str]]
    reference_mode: str | None = None
    reference_arch: str | None = None
    source: str | None = None

    def line(self, name: str, *extra: str) -> str:
        """``transferbench <name> --results R`` with the reference flags (and ``--source``, which ``compare`` does
        not take), then ``extra``."""
        text = f"transferbench {name} --results {shlex.quote(str(self.results))}"
        return " ".join(p for p in (text, self._reference_flags(with_source=name != "compare"), *extra) if p)

    def predictions(self, min_count: int, *extra: str) -> str:
        return " ".join([f"transferbench report beyond --results {shlex.quote(str(self.results))} --min-count "
                         f"{min_count}", *extra])

    def _reference_flags(self, with_source: bool) -> str:
        parts = []
        for group in self.reference_groups:
            parts += ["--reference", *group]
        flags = [("--reference-mode", self.reference_mode), ("--reference-arch", self.reference_arch)]
        for flag, value in flags + ([("--source", self.source)] if with_source else []):
            if value:
                parts += [flag, value]
        return " ".join(shlex.quote(str(p)) for p in parts)


def write_report(
    results: Path,
    *,
    reference_files: ReferenceFiles | None = None,
    reference_mode: str | None = None,
    reference_arch: str | None = None,
    source: str | None = None,
    min_count: int = MIN_COUNT,
    allow_incomplete_mean: bool = False,
    labels: Mapping[str, str] | None = None,
    protocol: Protocol = Protocol(),
) -> list[Path]:
    """Every table and figure of the results store ``results``, then ``<results>/report/index.md`` and
    ``index.html`` linking them; returns the two index files.

    ``reference_files`` are the paper's ``raw_results/*.txt`` (their mode and architecture read from the file
    names unless ``reference_mode``/``reference_arch`` say); ``source`` chooses ``ours``, ``paper`` or ``both``
    (default: both when the paper's results are there); ``min_count`` and ``allow_incomplete_mean`` are those of
    :func:`analyse_predictions` and the leaderboards; ``labels`` renames methods in the figures (``--label``);
    ``protocol`` as in :class:`Protocol`."""
    results = Path(results)
    commands = StepCommands(results, reference_groups(reference_files), reference_mode, reference_arch, source)
    incomplete = (["--allow-incomplete-mean"] if allow_incomplete_mean else []) + protocol.flags()
    label_flags = [f"--label {shlex.quote(f'{k}={v}')}" for k, v in (labels or {}).items()]
    report_runs = read_runs(results, reference_files=reference_files, reference_mode=reference_mode,
                            reference_arch=reference_arch, source=source, protocol=protocol)
    runs = report_runs.runs
    collected = write_collection(results, report_runs, source=source, allow_incomplete_mean=allow_incomplete_mean,
                                 labels=labels)
    boards = [p for p in collected if p.suffix == ".md" and p.parent.name == "leaderboards"]
    sections = [
        Section("Collected runs and leaderboards", commands.line("collect", *incomplete, *label_flags), files=collected,
                inline=boards),
        Section("Figures", commands.line("figures", *protocol.flags(), *label_flags),
                files=write_figures(runs, results / "figures", source=source, labels=labels)),
    ]
    if report_runs.reference is not None:
        sections.append(_compare_section(runs, results / "compare", commands.line("compare", *protocol.flags()),
                                         protocol))
    # every run of ours (those off the paper's protocol too: this compares our own runs with each other)
    ours = check_duplicate_seeds(report_runs.collection.runs, protocol.latest)
    result, files = analyse_predictions(ours, results / "beyond", min_count=min_count)
    # the formatted tables (in %, as the leaderboards), not the CSV files, which keep every digit
    latest = ["--latest"] if protocol.latest else []
    sections.append(Section("Beyond accuracy", commands.predictions(min_count, *latest), files=files,
                            inline=[p for p in files if p.suffix == ".md"], text=result.summary()))
    if (ours["mode"] == "estimate").any():
        sections.append(_rank_section(ours, results / "rank", commands.line("rank", *latest)))
    if (results / BIAS_DIR / "bias.md").is_file():
        sections.append(_bias_section(results / BIAS_DIR, f"transferbench report bias --results "
                                      f"{shlex.quote(str(results))}"))
    return write_index(
        results / "report",
        commands.line("report", f"--min-count {min_count}", *incomplete, *label_flags),
        sections,
        summary=report_runs.summary(),
        record_versions=run_versions(runs),
    )


def _compare_section(runs: pd.DataFrame, out_dir: Path, command: str, protocol: Protocol = Protocol()) -> Section:
    """The page's "Ours vs the paper" section; a comparison that cannot be made (e.g. no runs of ours yet) says
    why, and the rest of the report still stands."""
    try:
        table, files = compare_with_paper(runs, out_dir, protocol=protocol)
        return Section("Ours vs the paper", command, files=files, inline=[p for p in files if p.suffix == ".md"],
                       text=compare_summary(table))
    except TransferbenchError as exc:
        return Section("Ours vs the paper", command, text=f"not done: {exc}")


def rank_with_measured(results: Path, *, reference_files: ReferenceFiles | None = None,
                       reference_mode: str | None = None, reference_arch: str | None = None, out: Path | None = None,
                       latest: bool = False, bootstrap: int | None = None) -> tuple[Ranking, list[Path]]:
    """The estimate records under ``results`` ranked against measured transfer (``report.rank``): our linear and
    full runs, or the paper's per-seed results when ``reference_files`` are given now. Writes ``<out>`` (default
    ``<results>/rank``)."""
    from .rank import BOOTSTRAP, rank_estimators, write_ranking

    report_runs = read_runs(results, reference_files=reference_files, reference_mode=reference_mode,
                            reference_arch=reference_arch, protocol=Protocol(latest=latest))
    measured = report_runs.reference if reference_files else None
    ranking = rank_estimators(report_runs.collection.runs, measured,
                              bootstrap=BOOTSTRAP if bootstrap is None else bootstrap)
    if ranking.table.empty:
        raise TransferbenchError(f"no task has two checkpoints with both an estimate and a measured accuracy under "
                                 f"{results}: nothing to rank")
    return ranking, write_ranking(ranking, out or Path(results) / "rank")


def _rank_section(ours: pd.DataFrame, out_dir: Path, command: str) -> Section:
    """The page's "Transferability estimators" section (only when there are estimate records); a ranking that
    cannot be made (no measured runs yet) says why."""
    from .rank import rank_estimators, write_ranking

    try:
        ranking = rank_estimators(ours)
        if ranking.table.empty:
            raise TransferbenchError("no task has two checkpoints with both an estimate and a measured accuracy")
        files = write_ranking(ranking, out_dir)
        return Section("Transferability estimators", command, files=files,
                       inline=[p for p in files if p.suffix == ".md"])
    except TransferbenchError as exc:
        return Section("Transferability estimators", command, text=f"not done: {exc}")


def _bias_section(out_dir: Path, command: str) -> Section:
    """The page's "Bias study" section: links what ``report bias`` wrote to ``out_dir`` (not recomputed here: the
    study reads every CelebA-style run's predictions, and ``report bias`` is its own step)."""
    files = sorted(p for p in out_dir.iterdir() if p.is_file())
    return Section("Bias study (CelebA)", command, files=files, inline=[out_dir / "bias.md"])


__all__ = [
    "REFERENCE_FILE",
    "Protocol",
    "ReportRuns",
    "StepCommands",
    "analyse_predictions",
    "compare_with_paper",
    "load_reference",
    "rank_with_measured",
    "read_runs",
    "reference_groups",
    "write_collection",
    "write_report",
]

