"""The leaderboard files of a report: Markdown, CSV, full and compact LaTeX per (architecture, mode, source)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes
from .latex import compact_latex
from .leaderboard import SOURCE_SUFFIX, group_sources, leaderboard, resolve_source
from .select import report_groups

log = logging.getLogger("transferbench")


def write_leaderboards(
    runs: pd.DataFrame, out_dir: str | Path, metric: str = "primary", source: str | None = None,
    allow_incomplete_mean: bool = False, labels: dict[str, str] | None = None,
) -> list[Path]:
    """``leaderboard_<arch>_<mode>[_<solver>][_paper|_ours_vs_paper].{md,csv,tex}`` for every (arch, mode) in
    ``runs``: our runs (no suffix), the paper's (``_paper``) or both side by side (``_ours_vs_paper``)."""
    out = Path(out_dir)
    paths: list[Path] = []
    source = resolve_source(runs, source)
    for group in report_groups(runs):
        for src in group_sources(runs, group, source):
            stem = f"leaderboard_{group.stem}{SOURCE_SUFFIX[src]}"
            try:
                lb = leaderboard(runs, group.arch, group.mode, metric, solver=group.solver, source=src,
                                 allow_incomplete_mean=allow_incomplete_mean)
            except ValueError as exc:
                log.warning("no leaderboard %s: %s", stem, exc)
                continue
            paths.append(write_bytes(out / f"{stem}.md", lb.to_markdown().encode()))
            paths.append(lb.to_csv(out / f"{stem}.csv"))
            paths.append(write_bytes(out / f"{stem}.tex", lb.to_latex().encode()))
            compact = compact_latex(lb, labels)  # one paper column
            paths.append(write_bytes(out / f"{stem}_compact.tex", compact.encode()))
    log.info("wrote %d leaderboard file(s) to %s", len(paths), out)
    return paths
