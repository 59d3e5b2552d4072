"""Choosing the runs one table or figure is about: an architecture family, a protocol (mode), a source (our
runs or the paper's) and, for linear transfer, a solver — runs of different solvers or sources are never averaged
together.

Architectures are grouped by family (``resnet50_rigl`` and ``resnet50_str`` are ResNet50 variants whose weights
load into a different module layout), so that RigL and STR sit in the ResNet50 tables as in the paper."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pandas as pd

from ..errors import TransferbenchError
from ..protocol import PAPER as PAPER_PROTOCOL
from ..vocabulary import arch_family

log = logging.getLogger("transferbench")

METRICS = {"primary": "primary", "top1": "top1", "mean_per_class_acc": "mean_per_class_acc",
           "mean_per_class": "mean_per_class_acc"}
METRIC_LABELS = {"primary": "accuracy", "top1": "top-1 accuracy", "mean_per_class_acc": "mean per-class accuracy"}
CELL_KEYS = ["method", "sparsity", "task", "seed"]
SOURCES = ("ours", "paper", "both")
OURS, PAPER, BOTH = SOURCES


@dataclass(frozen=True)
class Group:
    """One (arch, mode[, solver]) slice of the runs, with the file-name stem that identifies it."""

    arch: str
    mode: str
    solver: str | None = None

    @property
    def stem(self) -> str:
        parts = [self.arch, self.mode] + ([self.solver] if self.solver else [])
        return "_".join(safe_name(p) for p in parts)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def metric_column(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return METRICS[metric]




def families(arch: pd.Series) -> pd.Series:
    """The architecture family of every row (mapped once per distinct value: runs tables can be large)."""
    return arch.map({a: arch_family(a) for a in arch.dropna().unique()})


def in_family(runs: pd.DataFrame, arch: str) -> pd.Series:
    """Rows whose architecture is ``arch`` or belongs to the family ``arch``."""
    return (runs["arch"] == arch) | (families(runs["arch"]) == arch)


def source_of(runs: pd.DataFrame) -> pd.Series:
    """The ``source`` column; tables collected before sources existed are all ours."""
    return runs["source"] if "source" in runs.columns else pd.Series(OURS, index=runs.index)


def sources_present(runs: pd.DataFrame) -> list[str]:
    return [s for s in (OURS, PAPER) if (source_of(runs) == s).any()]


def filter_source(runs: pd.DataFrame, source: str | None) -> pd.DataFrame:
    """The rows of one source (``ours`` or ``paper``); ``None`` accepts a table that has only one source."""
    if source is None:
        present = sources_present(runs)
        if len(present) > 1:
            raise ValueError("the runs mix our runs and the paper's; pass source='ours', 'paper' or 'both'")
        return runs
    if source not in (OURS, PAPER):
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    return runs[source_of(runs) == source]


def report_groups(runs: pd.DataFrame) -> list[Group]:
    """Every (arch family, mode) in ``runs``, split by solver where one (arch, mode) has runs of several solvers.
    Estimates are not transfer runs: `rank` reports them (``report.rank``), the leaderboards do not."""
    runs = runs[runs["mode"] != "estimate"]
    groups = []
    for (arch, mode), df in runs.groupby([families(runs["arch"]), runs["mode"]], sort=True):
        solvers = sorted(df["solver"].dropna().unique())
        if len(solvers) <= 1:
            groups.append(Group(str(arch), str(mode)))
            continue
        unknown = int(df["solver"].isna().sum())
        if unknown:
            log.warning("%s/%s: %d run(s) without a recorded solver are left out of the per-solver reports",
                        arch, mode, unknown)
        groups.extend(Group(str(arch), str(mode), str(s)) for s in solvers)
    return groups


def select_runs(
    runs: pd.DataFrame, arch: str, mode: str, solver: str | None = None, tasks: list[str] | None = None
) -> pd.DataFrame:
    """The runs of ``arch`` (or its family) under ``mode`` (and ``solver``, and ``tasks``), with a ``sparsity``
    column (the target fraction, rounded to 6 decimals so that equal targets group together)."""
    df = runs[in_family(runs, arch) & (runs["mode"] == mode)]
    if solver is not None:
        df = df[df["solver"] == solver]
    else:
        solvers = sorted(df["solver"].dropna().unique())
        if len(solvers) > 1:
            raise ValueError(f"runs for {arch}/{mode} use several solvers ({', '.join(solvers)}); "
                             "pass solver= to choose one")
    if tasks is not None:
        df = df[df["task"].isin(tasks)]
    df = one_train_size(full_split_first(df, f"{arch}/{mode}"), f"{arch}/{mode}")
    df = df.assign(sparsity=df["target_sparsity"].astype(float).round(6))
    return df


def limited(runs: pd.DataFrame) -> pd.Series:
    """Rows of ``--limit`` quick tries (a subset of each split); tables without a ``limit`` column have none."""
    if "limit" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return pd.to_numeric(runs["limit"], errors="coerce").fillna(0) > 0


def full_split_first(runs: pd.DataFrame, what: str) -> pd.DataFrame:
    """The runs on whole splits when ``runs`` has any, else ``runs`` as they are (a quick try's own tables): a
    ``--limit`` run never averages with, or stands in for, a full one."""
    quick = limited(runs)
    if quick.any() and not quick.all():
        log.info("%s: %d --limit run(s) left out beside the runs on whole splits", what, int(quick.sum()))
        return runs[~quick]
    return runs


def one_train_size(runs: pd.DataFrame, what: str) -> pd.DataFrame:
    """The runs on the whole training split when ``runs`` has any, else those of the largest low-data size: runs
    on different training sets never average together (the low-data tables, ``report.low_data``, show every
    size side by side)."""
    if "train_size" not in runs.columns or runs.empty:
        return runs
    sizes = pd.to_numeric(runs["train_size"], errors="coerce").fillna(0)
    keep = 0 if (sizes == 0).any() else sizes.max()
    if (sizes != keep).any():
        log.info("%s: %d low-data run(s) left out beside the runs on %s", what, int((sizes != keep).sum()),
                 "the whole training split" if keep == 0 else f"{int(keep)} training images")
    return runs[sizes == keep]


def deviating(runs: pd.DataFrame) -> pd.Series:
    """Rows of runs that did not follow the paper's protocol exactly (``protocol`` other than ``paper``, or a
    ``--limit`` quick try); tables without those columns have none."""
    off = limited(runs)
    if "protocol" in runs.columns:
        off = off | (runs["protocol"].fillna(PAPER_PROTOCOL) != PAPER_PROTOCOL)
    return off


def deviations_of(runs: pd.DataFrame) -> list[str]:
    """The distinct deviations of the deviating rows of ``runs``, sorted (for notes under tables and figures)."""
    off = runs[deviating(runs)]
    found = {d for text in off.get("protocol", pd.Series(dtype=object)).dropna() if text != PAPER_PROTOCOL
             for d in str(text).split("; ")}
    found |= {f"limit={int(n)}" for n in pd.to_numeric(off.get("limit", pd.Series(dtype=float)),
                                                         errors="coerce").dropna() if n > 0}
    return sorted(found)


def exclude_deviating(runs: pd.DataFrame, include: bool = False, what: str = "the comparison with the paper", *,
                      beside: pd.DataFrame | None = None) -> pd.DataFrame:
    """``runs`` without our runs that deviate from the paper's protocol (:func:`deviating`), unless ``include``
    (``--include-deviating``: they stay, and the tables and figures mark them); one log line says which.
    ``beside`` (the paper's rows): only runs of a (task, arch family, mode, solver) the paper has are left out, so
    that our own tables of tasks or solvers the paper lacks (the mini-suite, L-BFGS) keep theirs."""
    off = deviating(runs) & (source_of(runs) == OURS)
    if beside is not None and off.any():
        off &= _cell_groups(runs).isin(set(_cell_groups(beside)))
    if not off.any():
        return runs
    shown = "; ".join(deviations_of(runs[off])[:4])
    if include:
        log.warning("%d run(s) of ours that deviate from the paper's protocol (%s) are in %s, marked †",
                    int(off.sum()), shown, what)
        return runs
    log.warning("%d run(s) of ours that deviate from the paper's protocol (%s) are left out of %s; "
                "--include-deviating shows them, marked", int(off.sum()), shown, what)
    return runs[~off]


def _cell_groups(runs: pd.DataFrame) -> pd.Series:
    """(task, arch family, mode, solver) of every row, as one text (solver: sgd where unrecorded)."""
    solver = runs["solver"].fillna("sgd") if "solver" in runs.columns else pd.Series("sgd", index=runs.index)
    return runs["task"].astype(str) + "|" + families(runs["arch"]).astype(str) + "|" + runs["mode"].astype(str) + \
        "|" + solver.astype(str)


def _protocol_texts(runs: pd.DataFrame) -> pd.Series:
    """The ``protocol`` of every row (``paper`` where unrecorded), ``limit=N`` added for a --limit run that a table
    without protocols marks only by its ``limit`` column."""
    texts = runs["protocol"].astype(object).fillna(PAPER_PROTOCOL) if "protocol" in runs.columns else \
        pd.Series(PAPER_PROTOCOL, index=runs.index, dtype=object)
    limits = pd.to_numeric(runs["limit"], errors="coerce").fillna(0).astype(int) if "limit" in runs.columns else \
        pd.Series(0, index=runs.index)
    bare = (texts == PAPER_PROTOCOL) & (limits > 0)
    return texts.where(~bare, "limit=" + limits.astype(str))


DUPLICATE_KEYS = ["task", "method", "sparsity", "arch", "mode", "solver", "seed", "protocol"]


def check_duplicate_seeds(runs: pd.DataFrame, latest: bool = False) -> pd.DataFrame:
    """``runs`` where no two runs of ours share (task, method, sparsity, arch, mode, solver, seed) under the same
    protocol. Such a pair is an error naming both run keys, unless ``latest`` (``--latest``): then the newest of each
    counts, which one log line says. The paper's own repeats were merged when its files were read."""
    ours = source_of(runs) == OURS
    if not ours.any():
        return runs
    df = runs[ours]
    keys = df.assign(sparsity=df["target_sparsity"].astype(float).round(6), solver=df["solver"].fillna("sgd"),
                     protocol=_protocol_texts(df))
    keys = keys.sort_values([c for c in ("created_at", "run_key") if c in keys.columns], na_position="first",
                            kind="stable")
    older = keys.duplicated(DUPLICATE_KEYS, keep="last")
    if not older.any():
        return runs
    if not latest:
        first = keys[older].iloc[0]
        twin = keys[(keys[DUPLICATE_KEYS] == first[DUPLICATE_KEYS]).all(axis=1)]["run_key"]
        names = " and ".join(str(k) for k in twin)
        raise TransferbenchError(
            f"runs {names} repeat seed {first['seed']} of {first['task']}/{first['method']}/{first['arch']}/"
            f"{first['mode']} under the same protocol ({int(older.sum())} such repeat(s) in all): keep one (move the "
            "other's runs/<run_key> folder out of --results), or pass --latest to count the newest of each")
    log.warning("--latest: %d older run(s) repeating a seed left out, the newest of each counts: %s%s",
                int(older.sum()), ", ".join(keys.loc[older, "run_key"].astype(str)[:5]),
                ", ..." if older.sum() > 5 else "")
    return runs.drop(index=keys.index[older])


def split_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one run per (method, sparsity, task, seed), the most recent; return (kept, dropped).

    Two completed runs with the same cell and seed differ in some hyper-parameter (another run key); averaging
    them as if they were seeds would inflate the seed count, so only one counts: one that followed the paper's
    protocol before one that did not (``--include-deviating``), else the newest. Repeats under one protocol are
    refused earlier (:func:`check_duplicate_seeds`) in the report commands."""
    order = df.assign(_paper=~deviating(df)).sort_values(["_paper", "created_at", "run_key"],
                                                          na_position="first", kind="stable").drop(columns="_paper")
    dup = order.duplicated(CELL_KEYS, keep="last")
    dropped, kept = order[dup], order[~dup]
    if len(dropped):
        # the paper's own repeats were reported once, when its files were read
        quiet = (source_of(dropped) == PAPER).all()
        (log.info if quiet else log.warning)(
            "%d run(s) repeat a (method, sparsity, task, seed) already present; only the newest counts: %s%s",
            len(dropped), ", ".join(dropped["run_key"].astype(str)[:5]), ", ..." if len(dropped) > 5 else "")
    return kept.sort_index(), dropped


def per_seed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs by cell, as compare and beyond-accuracy read them: the architecture as its family, ``sparsity``
    (the target fraction rounded to 6 decimals), ``solver`` filled in, and one run per seed of a cell (the newest,
    as in the leaderboards), deduplicated within each (arch family, mode, solver)."""
    # records that name no solver predate `--solver lbfgs`: they were trained with SGD, as the paper's
    df = runs.assign(
        arch=families(runs["arch"]),
        sparsity=runs["target_sparsity"].astype(float).round(6),
        solver=runs["solver"].fillna("sgd"),
    )
    kept = [split_duplicates(group)[0] for _, group in df.groupby(["arch", "mode", "solver"], sort=False)]
    return pd.concat(kept) if kept else df
