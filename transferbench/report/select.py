"""Choosing the runs one table or figure is about: an architecture, a protocol (mode) and, for linear
transfer, a solver — runs of different solvers are never averaged together."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pandas as pd

log = logging.getLogger("transferbench")

METRICS = {"primary": "primary", "top1": "top1", "mean_per_class_acc": "mean_per_class_acc",
           "mean_per_class": "mean_per_class_acc"}
METRIC_LABELS = {"primary": "accuracy", "top1": "top-1 accuracy", "mean_per_class_acc": "mean per-class accuracy"}
CELL_KEYS = ["method", "sparsity", "task", "seed"]


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


def report_groups(runs: pd.DataFrame) -> list[Group]:
    """Every (arch, mode) in ``runs``, split by solver where one (arch, mode) has runs of several solvers."""
    groups = []
    for (arch, mode), df in runs.groupby(["arch", "mode"], sort=True):
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
    """The runs of ``arch``/``mode`` (and ``solver``, and ``tasks``), with a ``sparsity`` column (the target
    fraction, rounded to 6 decimals so that equal targets group together)."""
    df = runs[(runs["arch"] == arch) & (runs["mode"] == mode)]
    if solver is not None:
        df = df[df["solver"] == solver]
    else:
        solvers = sorted(df["solver"].dropna().unique())
        if len(solvers) > 1:
            raise ValueError(f"runs for {arch}/{mode} use several solvers ({', '.join(solvers)}); "
                             "pass solver= to choose one")
    if tasks is not None:
        df = df[df["task"].isin(tasks)]
    df = df.assign(sparsity=df["target_sparsity"].astype(float).round(6))
    return df


def split_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one run per (method, sparsity, task, seed), the most recent; return (kept, dropped).

    Two completed runs with the same cell and seed differ in some hyper-parameter (another run key); averaging
    them as if they were seeds would inflate the seed count, so only the newest one counts."""
    order = df.sort_values(["created_at", "run_key"], na_position="first", kind="stable")
    dup = order.duplicated(CELL_KEYS, keep="last")
    dropped, kept = order[dup], order[~dup]
    if len(dropped):
        log.warning("%d run(s) repeat a (method, sparsity, task, seed) already present; only the newest counts: %s",
                    len(dropped), ", ".join(dropped["run_key"].astype(str)))
    return kept.sort_index(), dropped
