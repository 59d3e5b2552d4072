"""Text pieces shared by the report's tables: sparsity and mean ± std cells, Markdown tables, LaTeX escaping.

Values are percentages with 2 decimals. Nothing here knows a leaderboard (that is ``leaderboard.py``, which renders
itself with these pieces), so every table writer can import this module."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..vocabulary import format_sparsity

MISSING = "—"
LATEX_MISSING = "---"
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def fmt_sparsity(s: float) -> str:
    """A target sparsity as every table, key and log line prints it (``vocabulary.format_sparsity``): 90%, 97.5%."""
    return format_sparsity(s)


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


def cell_parts(mean: float, std: float, n: float, delta: bool, n_max: float | None = None) -> tuple[str, str] | None:
    """(value text, seed-count text) of a cell, or None when it is missing."""
    if math.isnan(mean):
        return None
    if delta:
        return f"{mean:+.2f}", ""
    value = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return value, seed_count_text(n, n_max)


def cell_text(mean: float, std: float, n: float, delta: bool = False, n_max: float | None = None) -> str:
    """A cell as one string: ``81.20 ± 0.31 (n=3)``, ``+1.05`` for a Δ, ``—`` when it is missing."""
    parts = cell_parts(mean, std, n, delta, n_max)
    if parts is None:
        return MISSING
    return f"{parts[0]} ({parts[1]})" if parts[1] else parts[0]


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped, so that it prints as written."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
