"""The compact LaTeX variant of a leaderboard, sized for one column of a two-column paper.

The full variant (``Leaderboard.to_latex``) has every cell as ``mean ± std (n)``: 16 wide columns. The compact one
keeps what a reader compares: per task the mean over seeds with one decimal (best in bold), the task mean with its
± in a smaller font, and Δ vs dense; methods by their display names, each named once above its sparsities; task
columns abbreviated (``TASK_ABBREVIATIONS``, named in full in the comment above the table). The stds and seed counts
stay in the full variant and the CSV. The tabular is scaled to the column width (``\\resizebox``, from graphicx).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .palette import display_name
from .render import LATEX_MISSING, fmt_sparsity, latex_escape

# How the compact table heads the tasks of the paper's suite (others: their first five letters)
TASK_ABBREVIATIONS: dict[str, str] = {
    "aircraft": "Air", "birds": "Bird", "caltech101": "C101", "caltech256": "C256", "cars": "Cars",
    "cifar10": "C10", "cifar100": "C100", "dtd": "DTD", "flowers": "Flw", "food101": "Food", "pets": "Pets",
    "sun397": "SUN",
}
SOURCE_ABBREVIATIONS = {"ours": "ours", "paper": "pap."}

if TYPE_CHECKING:  # leaderboard.py writes this variant, so this module must not import it at run time
    from .leaderboard import Leaderboard


def abbreviate_task(task: str) -> str:
    return TASK_ABBREVIATIONS.get(task, task[:5])


def _number(value: float, signed: bool = False) -> str:
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text.replace("+", "$+$").replace("-", "$-$")


def _cell(lb: Leaderboard, row: tuple, column: str) -> str:
    mean_column, delta_column = lb.columns[-2:]  # every leaderboard ends with the task mean and Δ vs dense
    mean, std, _ = lb.cell(row, column)
    if math.isnan(mean):
        return LATEX_MISSING
    text = _number(mean, signed=column == delta_column)
    if bool(lb.best.loc[row, column]):
        text = rf"\textbf{{{text}}}"
    if column == mean_column and not math.isnan(std):
        text += rf"{{\tiny$\pm${std:.1f}}}"
    if lb.marked(row, column):  # a cell of ours holding a run off the paper's protocol (--include-deviating)
        text += r"\textsuperscript{\dag}"
    return text


def compact_latex(lb: Leaderboard, labels: Mapping[str, str] | None = None) -> str:
    """``lb`` as a one-column booktabs table (see the module docstring); ``labels`` renames methods as
    ``--label`` does."""
    side = lb.side_by_side
    lead = ["Method", "Sp.", *(["Src."] if side else [])]
    header = [*lead, *(abbreviate_task(t) for t in lb.tasks), "Mean", r"$\Delta$"]
    legend = ", ".join(f"{abbreviate_task(t)} = {t}" for t in lb.tasks)
    lines = [
        "% " + latex_escape(f"{lb.title}, in %: mean over seeds per task (best in bold), the mean over the tasks "
                            "± sqrt(Σ_t s_t²)/T, Δ = mean − dense's mean. Stds and seed counts per cell: the full "
                            f"variant. {legend}.").replace("±", r"$\pm$").replace("Δ", r"$\Delta$"),
        r"% requires \usepackage{booktabs,graphicx}",
        r"\resizebox{\columnwidth}{!}{%",
        r"\setlength{\tabcolsep}{3pt}%",
        r"\begin{tabular}{" + "l" * len(lead) + "r" * (len(lb.tasks) + 2) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    previous = None
    for row in lb.table.index:
        method, sparsity = row[0], row[1]
        if previous is not None and method != previous:
            lines.append(r"\midrule" if previous == "dense" else r"\addlinespace[2pt]")
        name = latex_escape(display_name(method, labels)) if method != previous else ""
        previous = method
        first = [name, latex_escape(fmt_sparsity(sparsity)), *([SOURCE_ABBREVIATIONS.get(row[2], row[2])] if side
                                                               else [])]
        lines.append(" & ".join([*first, *(_cell(lb, row, c) for c in lb.columns)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    lines += ["% warning: " + latex_escape(w).replace("Δ", r"$\Delta$") for w in lb.warnings]
    if lb.deviating is not None and lb.deviating.to_numpy().any():
        off = "; ".join(lb.deviations)
        lines.append("% " + latex_escape(f"dag: holds runs of ours off the paper's protocol ({off}), included by "
                                         "--include-deviating"))
    return "\n".join(lines) + "\n"
