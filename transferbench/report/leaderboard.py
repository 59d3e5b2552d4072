"""Leaderboards: one row per (method, target sparsity), one column per task, plus the task mean and Δ vs dense.

Cells are the mean ± std over seeds (ddof=1; none for a single seed) with the seed count, in percent. The task
mean is the mean over the T tasks of the per-task means m_t; its ± is sqrt(Σ_t s_t²) / T, the std that the task
mean of one seed has when seeds vary independently across tasks (so it reads like a cell's ±, and it needs no seed
to have run every task: the paper's files have 3 seeds on one task and 4 on another); there is none when a task
has a single seed. Its n is the range of the per-task seed counts (``n=3``, ``n=3–4``). A row with a missing task
has no mean unless ``allow_incomplete_mean`` (then it averages the tasks it has). Δ vs dense is the row mean
minus the mean of the ``dense`` row; where the dense row has no mean (a missing task) Δ is missing, which the
leaderboard says in ``warnings`` and under its tables. The best entry of each column (at the displayed precision,
ties included) is flagged.

Our runs and the paper's (``source``) are never mixed in one cell. ``source="both"`` puts them side by side: rows
(method, sparsity, source), each source's Δ against its own dense row and its own best entries, over the tasks
both sources have (so that the two means are over the same tasks). There, a cell of ours holding a run that
deviates from the paper's protocol (present only with ``--include-deviating``; ``select.exclude_deviating``) is
marked ``†`` and the deviations are listed under the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_bytes
from .palette import DENSE, method_sort_key
from .render import LATEX_MISSING, MISSING, cell_parts, cell_text, fmt_sparsity, latex_escape, markdown_table
from .select import (
    BOTH,
    METRIC_LABELS,
    OURS,
    PAPER,
    deviating,
    deviations_of,
    filter_source,
    metric_column,
    select_runs,
    sources_present,
    split_duplicates,
)

log = logging.getLogger("transferbench")

MEAN = "mean"
DEVIATION_MARK = "†"  # a cell of ours holding a run off the paper's protocol (side by side, --include-deviating)
DELTA = "Δ vs dense"
STATS = ("mean", "std", "n")
N_MAX = "n_max"  # the largest per-task seed count behind a mean over tasks ("n" holds the smallest)


@dataclass(frozen=True)
class Leaderboard:
    arch: str
    mode: str
    metric: str
    tasks: list[str]
    table: pd.DataFrame  # index (method, sparsity); columns (column, stat), stat in mean/std/n; values in %
    best: pd.DataFrame  # bool, index as table, one column per column of the leaderboard
    allow_incomplete_mean: bool = False
    solver: str | None = None
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # runs left out as repeats of a seed
    source: str | None = None  # None/"ours": our runs; "paper"; "both": index (method, sparsity, source)
    warnings: tuple[str, ...] = ()  # one line each, printed under the rendered tables
    # side by side: bool, index as table, one column per column of the leaderboard: a cell of ours holding a run
    # off the paper's protocol (marked †); ``deviations`` lists what those runs changed
    deviating: pd.DataFrame | None = None
    deviations: tuple[str, ...] = ()

    @property
    def side_by_side(self) -> bool:
        return self.source == BOTH

    @property
    def columns(self) -> list[str]:
        return [*self.tasks, MEAN, DELTA]

    @property
    def title(self) -> str:
        solver = f" ({self.solver})" if self.solver else ""
        label = METRIC_LABELS.get(metric_column(self.metric), self.metric)
        primary = " (the metric each task reports)" if self.metric == "primary" else ""
        origin = {PAPER: " · the paper's results", BOTH: " · ours vs the paper's"}.get(self.source or "", "")
        return f"{self.arch} · {self.mode}{solver} · {label}{primary}{origin}"

    def cell(self, row: tuple, column: str) -> tuple[float, float, float]:
        """(mean, std, n) of one cell; for the mean over tasks, n is the smallest per-task seed count."""
        return tuple(float(self.table.loc[row, (column, s)]) for s in STATS)  # type: ignore[return-value]

    def seed_range(self, row: tuple, column: str) -> tuple[float, float]:
        """(fewest, most) seeds behind a cell: equal for a task, the per-task range for the mean over tasks."""
        return float(self.table.loc[row, (column, "n")]), float(self.table.loc[row, (column, N_MAX)])

    def marked(self, row: tuple, column: str) -> bool:
        """Whether the cell holds a run of ours that deviates from the paper's protocol (side by side only)."""
        return self.deviating is not None and bool(self.deviating.loc[row, column])

    def to_frame(self) -> pd.DataFrame:
        """The leaderboard in long form: one row per (method, sparsity, column) with mean, std, n, best and
        ``deviating`` (a cell of ours holding a run off the paper's protocol)."""
        out = []
        for row in self.table.index:
            source = row[2] if self.side_by_side else (self.source or OURS)
            for col in self.columns:
                mean, std, n = self.cell(row, col)
                n_max = self.seed_range(row, col)[1]
                out.append({"arch": self.arch, "mode": self.mode, "solver": self.solver, "metric": self.metric,
                            "source": source, "method": row[0], "sparsity": row[1], "column": col, "mean": mean,
                            "std": std, "n": n, "n_max": n_max, "best": bool(self.best.loc[row, col]),
                            "deviating": self.marked(row, col),
                            "text": cell_text(mean, std, n, delta=col == DELTA, n_max=n_max)})
        return pd.DataFrame(out)

    def to_markdown(self) -> str:
        """The table in Markdown, best entries in bold, with the note that defines it and any warnings."""
        return _markdown(self)

    def to_latex(self) -> str:
        """The table as a booktabs ``tabular``, the note and any warnings as ``%`` comments."""
        return _latex(self)

    def to_csv(self, path: str | Path) -> Path:
        return write_bytes(path, self.to_frame().to_csv(index=False).encode())


def leaderboard(
    runs: pd.DataFrame,
    arch: str,
    mode: str,
    metric: str = "primary",
    tasks: list[str] | None = None,
    allow_incomplete_mean: bool = False,
    *,
    solver: str | None = None,
    source: str | None = None,
) -> Leaderboard:
    """The leaderboard of ``arch`` under ``mode`` for ``metric`` (primary, top1 or mean_per_class_acc).

    ``tasks`` fixes the columns and their order (default: every task present, sorted); ``solver`` chooses the
    linear solver where the runs have several (otherwise a ValueError). ``source`` is ``ours``, ``paper`` or
    ``both`` (side by side); it may be left out when the runs have one source only."""
    if source == BOTH:
        return _side_by_side(runs, arch, mode, metric, tasks, allow_incomplete_mean, solver)
    col = metric_column(metric)
    df = select_runs(filter_source(runs, source), arch, mode, solver, tasks)
    df = df[df[col].notna()]
    if df.empty:
        raise ValueError(f"no completed runs with metric {metric!r} for {arch}/{mode}"
                         + (f" (solver {solver})" if solver else ""))
    df, duplicates = split_duplicates(df)
    task_list = list(tasks) if tasks is not None else sorted(df["task"].unique())
    rows = sorted(set(zip(df["method"], df["sparsity"], strict=True)), key=lambda r: (method_sort_key(r[0]), r[1]))
    index = pd.MultiIndex.from_tuples(rows, names=["method", "sparsity"])
    per_task = _PerTask.of(df, col, index, task_list)
    task_mean = _task_mean(per_task, allow_incomplete_mean)
    dense_mean, warnings = _dense_mean(per_task, task_mean["mean"], rows, f"{arch}/{mode}")
    table = _table(per_task, task_mean, dense_mean, index)
    return Leaderboard(arch=arch, mode=mode, metric=metric, tasks=task_list, table=table,
                       best=_best_entries(table, [*task_list, MEAN, DELTA]),
                       allow_incomplete_mean=allow_incomplete_mean, solver=solver, duplicates=duplicates,
                       source=source, warnings=tuple(warnings))


@dataclass(frozen=True)
class _PerTask:
    """Per (row, task): the mean and std over seeds in %, and the seed count (0 where the task has no run)."""

    means: pd.DataFrame
    stds: pd.DataFrame
    counts: pd.DataFrame

    @classmethod
    def of(cls, df: pd.DataFrame, col: str, index: pd.MultiIndex, tasks: list[str]) -> _PerTask:
        stats = df.groupby(["method", "sparsity", "task"])[col].agg(["mean", "std", "count"])
        per_task = {s: stats[s].unstack("task").reindex(index=index, columns=tasks) for s in ("mean", "std", "count")}
        return cls(per_task["mean"] * 100, per_task["std"] * 100, per_task["count"].fillna(0))

    @property
    def present(self) -> pd.DataFrame:
        return self.means.notna()


def _task_mean(per_task: _PerTask, allow_incomplete_mean: bool) -> dict[str, pd.Series]:
    """The mean over tasks of each row with its ± (see the module docstring) and its fewest and most seeds."""
    means, present = per_task.means, per_task.present
    has_mean = means.notna().all(axis=1) | allow_incomplete_mean
    row_mean = means.mean(axis=1, skipna=True).where(has_mean)
    n_tasks = present.sum(axis=1)
    # a task with one seed has no std, and then neither has the row
    every_std = (per_task.stds.notna() | ~present).all(axis=1)
    row_std = (np.sqrt((per_task.stds**2).where(present).sum(axis=1)) / n_tasks).where(
        has_mean & every_std & (n_tasks > 0))
    seeds_used = per_task.counts.where(present)
    return {"mean": row_mean, "std": row_std, "n": seeds_used.min(axis=1).where(row_mean.notna()),
            N_MAX: seeds_used.max(axis=1).where(row_mean.notna())}


def _dense_mean(per_task: _PerTask, row_mean: pd.Series, rows: list[tuple], where: str) -> tuple[float, list[str]]:
    """The dense row's mean over tasks (NaN when there is none, or it misses a task) and the warnings that say
    why Δ vs dense is missing; ``where`` names the leaderboard (``arch/mode``) in the log."""
    dense_rows = [r for r in rows if r[0] == DENSE]
    dense_mean = row_mean.loc[dense_rows[0]] if dense_rows else np.nan
    if len(dense_rows) > 1:
        log.warning("%s: several dense rows (sparsity %s); Δ vs dense uses the first",
                    where, ", ".join(str(r[1]) for r in dense_rows))
    warnings = []
    if not dense_rows:
        warnings.append(f"no dense row for {where}: Δ vs dense is missing everywhere")
    elif pd.isna(dense_mean):
        lacking = [t for t in per_task.means.columns if pd.isna(per_task.means.loc[dense_rows[0], t])]
        warnings.append(f"the dense row misses {', '.join(lacking)}: Δ vs dense is missing everywhere "
                        "(run dense on every task, or pass --allow-incomplete-mean)")
    for text in warnings:
        log.warning("%s: %s", where, text)
    return dense_mean, warnings


def _table(per_task: _PerTask, task_mean: dict[str, pd.Series], dense_mean: float,
           index: pd.MultiIndex) -> pd.DataFrame:
    """The leaderboard's table: columns (column, stat) for every task, the mean over tasks and Δ vs dense."""
    data: dict[tuple[str, str], pd.Series] = {}
    for t in per_task.means.columns:
        n = per_task.counts[t].where(per_task.present[t]).astype(float)
        data[(t, "mean")], data[(t, "std")] = per_task.means[t], per_task.stds[t]
        data[(t, "n")], data[(t, N_MAX)] = n, n
    for stat in ("mean", "std", "n", N_MAX):
        data[(MEAN, stat)] = task_mean[stat]
    data[(DELTA, "mean")] = task_mean["mean"] - dense_mean
    for stat in ("std", "n", N_MAX):
        data[(DELTA, stat)] = pd.Series(np.nan, index=index)
    table = pd.DataFrame(data, index=index)
    table.columns = pd.MultiIndex.from_tuples(list(data), names=["column", "stat"])
    return table


def _best_entries(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per column, the rows whose mean is the largest at the displayed precision (ties included)."""
    best = pd.DataFrame(False, index=table.index, columns=columns)
    for c in best.columns:
        shown = table[(c, "mean")].round(2)
        if shown.notna().any():
            best[c] = shown == shown.max()
    return best


def _side_by_side(
    runs: pd.DataFrame, arch: str, mode: str, metric: str, tasks: list[str] | None, allow: bool, solver: str | None
) -> Leaderboard:
    selected = {s: select_runs(filter_source(runs, s), arch, mode, solver, tasks) for s in (OURS, PAPER)}
    selected = {s: df for s, df in selected.items() if df[metric_column(metric)].notna().any()}
    if not selected:
        raise ValueError(f"no completed runs with metric {metric!r} for {arch}/{mode}")
    if tasks is None:
        task_sets = [set(df["task"]) for df in selected.values()]
        common = set.intersection(*task_sets)
        tasks = sorted(common or set.union(*task_sets))
    parts = {s: leaderboard(runs, arch, mode, metric, tasks, allow, solver=solver, source=s) for s in selected}
    table = pd.concat({s: lb.table for s, lb in parts.items()}, names=["source"])
    best = pd.concat({s: lb.best for s, lb in parts.items()}, names=["source"])
    order = sorted(table.index, key=lambda r: (method_sort_key(r[1]), r[2], (OURS, PAPER).index(r[0])))
    index = pd.MultiIndex.from_tuples([(m, sp, s) for s, m, sp in order], names=["method", "sparsity", "source"])
    table = table.reorder_levels([1, 2, 0]).reindex(index)
    best = best.reorder_levels([1, 2, 0]).reindex(index)
    duplicates = pd.concat([lb.duplicates for lb in parts.values()])
    warnings = tuple(f"{s}: {w}" for s, lb in parts.items() for w in lb.warnings)
    counted = selected[OURS].drop(index=parts[OURS].duplicates.index, errors="ignore") if OURS in parts else None
    marks = _deviating_cells(counted, index, [*tasks, MEAN, DELTA])
    return Leaderboard(arch=arch, mode=mode, metric=metric, tasks=list(tasks), table=table, best=best,
                       allow_incomplete_mean=allow, solver=solver, duplicates=duplicates, source=BOTH,
                       warnings=warnings, deviating=marks,
                       deviations=tuple(deviations_of(counted)) if counted is not None else ())


def _deviating_cells(ours: pd.DataFrame | None, index: pd.MultiIndex, columns: list[str]) -> pd.DataFrame:
    """Per cell of a side-by-side leaderboard: whether it holds a run of ours off the paper's protocol (the mean
    and Δ of a row when any of its tasks does)."""
    marks = pd.DataFrame(False, index=index, columns=columns)
    if ours is None or ours.empty:
        return marks
    off = ours[deviating(ours)]
    for (method, sparsity, task), _ in off.groupby(["method", "sparsity", "task"]):
        row = (method, sparsity, OURS)
        if row in marks.index and task in marks.columns:
            marks.loc[row, [task, MEAN, DELTA]] = True
    return marks


def resolve_source(runs: pd.DataFrame, source: str | None) -> str:
    """``source`` as given, or (None) ``both`` when the runs have both sources, else the one they have."""
    if source is not None:
        return source
    present = sources_present(runs)
    return BOTH if len(present) > 1 else (present[0] if present else OURS)


SOURCE_SUFFIX = {OURS: "", PAPER: "_paper", BOTH: "_ours_vs_paper"}


def group_sources(runs: pd.DataFrame, group, source: str) -> list[str]:
    """Which renderings a (arch, mode) group gets: ``both`` only where both sources have runs in it (otherwise
    the one source it has), a single source where it has runs."""
    from .select import in_family

    rows = runs[in_family(runs, group.arch) & (runs["mode"] == group.mode)]
    if group.solver is not None:  # the paper's SGD rows do not make an L-BFGS table "both"
        rows = rows[rows["solver"] == group.solver]
    present = sources_present(rows)
    if source == BOTH:
        return [BOTH] if len(present) > 1 else present
    return [source] if source in present else []


# ------------------------------------------------------------------------------------------- text renderings


def _rendered_rows(lb: Leaderboard):
    """(method, sparsity, source or None, cells) per row; source only in side-by-side leaderboards; each cell is
    ((value text, seed-count text) or None when missing, whether it is a best entry)."""
    for row in lb.table.index:
        cells = []
        for col in lb.columns:
            mean, std, n = lb.cell(row, col)
            n_max = lb.seed_range(row, col)[1]
            parts = cell_parts(mean, std, n, delta=col == DELTA, n_max=n_max)
            if parts is not None and lb.marked(row, col):
                parts = (f"{parts[0]}{DEVIATION_MARK}", parts[1])
            cells.append((parts, bool(lb.best.loc[row, col])))
        yield row[0], row[1], (row[2] if lb.side_by_side else None), cells


def _note(lb: Leaderboard) -> str:
    """The sentence under a leaderboard that says what its cells, means and Δ are."""
    if lb.allow_incomplete_mean:
        incomplete = "the tasks it has"
    else:
        n = len(lb.tasks)
        incomplete = f"the {n} task{'s' if n != 1 else ''} (none if one is missing)"
    dense = "the dense row of the same source" if lb.side_by_side else "the dense row"
    best = "Best per column and source" if lb.side_by_side else "Best per column"
    return (f"{lb.title}, in %: mean ± std over seeds (n = seeds; std with ddof=1). mean = mean over {incomplete} "
            "of the per-task means; its ± is sqrt(Σ_t s_t²)/T from the per-task stds s_t (none if a task has one "
            f"seed), its n the range of the per-task seed counts. Δ vs dense = mean − {dense}'s mean. "
            f"{best} in bold; {MISSING} = no completed run.")


def deviation_note(lb: Leaderboard) -> str:
    """The footnote for cells marked †, or "" when none is."""
    if lb.deviating is None or not lb.deviating.to_numpy().any():
        return ""
    return (f"{DEVIATION_MARK} holds runs of ours that deviate from the paper's protocol "
            f"({'; '.join(lb.deviations)}), included by --include-deviating: not the paper's experiment.")


def _markdown(lb: Leaderboard) -> str:
    lead = ["method", "sparsity", *(["source"] if lb.side_by_side else [])]
    rows = []
    for method, sparsity, source, cells in _rendered_rows(lb):
        texts = []
        for parts, best in cells:
            if parts is None:
                texts.append(MISSING)
                continue
            value = f"**{parts[0]}**" if best else parts[0]
            texts.append(f"{value} ({parts[1]})" if parts[1] else value)
        rows.append([method, fmt_sparsity(sparsity), *([source] if source else []), *texts])
    table = markdown_table([*lead, *lb.columns], rows, left=("method", "source"))
    warnings = "".join(f"\n**Warning:** {w}\n" for w in lb.warnings)
    footnote = f"\n{deviation_note(lb)}\n" if deviation_note(lb) else ""
    return table + f"\n\n_{_note(lb)}_\n" + footnote + warnings


def _latex_header(name: str) -> str:
    return r"$\Delta$ vs dense" if name == DELTA else latex_escape(name)


def _latex_cell(parts: tuple[str, str] | None, best: bool) -> str:
    if parts is None:
        return LATEX_MISSING
    value = parts[0].replace(" ± ", r" $\pm$ ").replace("+", "$+$").replace("-", "$-$").replace(
        DEVIATION_MARK, r"\textsuperscript{\dag}")
    value = rf"\textbf{{{value}}}" if best else value
    return rf"{value} {{\scriptsize ({parts[1]})}}" if parts[1] else value


def _latex(lb: Leaderboard) -> str:
    lead = ["method", "sparsity", *(["source"] if lb.side_by_side else [])]
    header = [*lead, *(_latex_header(c) for c in lb.columns)]
    lines = [
        "% " + latex_escape(_note(lb)).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "-")
        .replace(MISSING, LATEX_MISSING),
        r"% requires \usepackage{booktabs}",
        r"\begin{tabular}{" + "l" * len(lead) + "r" * len(lb.columns) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    previous = None
    for method, sparsity, source, cells in _rendered_rows(lb):
        if previous == DENSE and method != DENSE:
            lines.append(r"\midrule")
        previous = method
        first = [latex_escape(method), latex_escape(fmt_sparsity(sparsity)), *([source] if source else [])]
        lines.append(" & ".join([*first, *(_latex_cell(parts, best) for parts, best in cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += ["% warning: " + latex_escape(w).replace("Δ", r"$\Delta$") for w in lb.warnings]
    if deviation_note(lb):
        lines.append("% " + latex_escape(deviation_note(lb)).replace(DEVIATION_MARK, r"\dag"))
    return "\n".join(lines) + "\n"
