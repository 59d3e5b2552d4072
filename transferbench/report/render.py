"""Text renderings of a Leaderboard: Markdown and LaTeX (booktabs). Values are percentages with 2 decimals."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .leaderboard import Leaderboard

MISSING = "—"
LATEX_MISSING = "---"
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def fmt_sparsity(s: float) -> str:
    """A target fraction with at least 2 decimals: 0.90, 0.95, 0.975."""
    text = f"{s:.4f}".rstrip("0")
    head, _, tail = text.partition(".")
    return f"{head}.{tail.ljust(2, '0')}"


def markdown_table(header: list[str], rows: Iterable[Iterable[object]], left: Iterable[str] = ()) -> str:
    """A Markdown table (no trailing newline): columns named in ``left`` are left-aligned, the rest right-aligned
    (numbers). A ``|`` inside a cell is escaped so that it cannot split the cell."""
    left = set(left)
    lines = ["| " + " | ".join(header) + " |", "|" + "".join(":--|" if h in left else "--:|" for h in header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seed_count_text(n: float, n_max: float | None = None) -> str:
    """``n=3``, or ``n=3–5`` for a mean over tasks whose tasks have different seed counts; "" when unknown."""
    if math.isnan(n) or n < 1:
        return ""
    if n_max is None or math.isnan(n_max) or n_max == n:
        return f"n={int(n)}"
    return f"n={int(n)}–{int(n_max)}"


def _parts(mean: float, std: float, n: float, delta: bool, n_max: float | None = None) -> tuple[str, str] | None:
    """(value text, seed-count text) of a cell, or None when it is missing."""
    if math.isnan(mean):
        return None
    if delta:
        return f"{mean:+.2f}", ""
    value = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return value, seed_count_text(n, n_max)


def cell_text(mean: float, std: float, n: float, delta: bool = False, n_max: float | None = None) -> str:
    parts = _parts(mean, std, n, delta, n_max)
    if parts is None:
        return MISSING
    return f"{parts[0]} ({parts[1]})" if parts[1] else parts[0]


def _rows(lb: Leaderboard):
    """(method, sparsity, source or None, cells) per row; source only in side-by-side leaderboards."""
    from .leaderboard import DELTA

    for row in lb.table.index:
        cells = []
        for col in lb.columns:
            mean, std, n = lb.cell(row, col)
            n_max = lb.seed_range(row, col)[1]
            cells.append((_parts(mean, std, n, delta=col == DELTA, n_max=n_max), bool(lb.best.loc[row, col])))
        yield row[0], row[1], (row[2] if lb.side_by_side else None), cells


def _note(lb: Leaderboard) -> str:
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


def markdown(lb: Leaderboard) -> str:
    lead = ["method", "sparsity", *(["source"] if lb.side_by_side else [])]
    rows = []
    for method, sparsity, source, cells in _rows(lb):
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
    return table + f"\n\n_{_note(lb)}_\n" + warnings


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_header(name: str) -> str:
    from .leaderboard import DELTA

    return r"$\Delta$ vs dense" if name == DELTA else latex_escape(name)


def latex(lb: Leaderboard) -> str:
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
    for method, sparsity, source, cells in _rows(lb):
        if previous == "dense" and method != "dense":
            lines.append(r"\midrule")
        previous = method
        texts = []
        for parts, best in cells:
            if parts is None:
                texts.append(LATEX_MISSING)
                continue
            value = parts[0].replace(" ± ", r" $\pm$ ").replace("+", "$+$").replace("-", "$-$")
            value = rf"\textbf{{{value}}}" if best else value
            texts.append(rf"{value} {{\scriptsize ({parts[1]})}}" if parts[1] else value)
        first = [latex_escape(method), fmt_sparsity(sparsity), *([source] if source else [])]
        lines.append(" & ".join([*first, *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += ["% warning: " + latex_escape(w).replace("Δ", r"$\Delta$") for w in lb.warnings]
    return "\n".join(lines) + "\n"
