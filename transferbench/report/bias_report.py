"""``transferbench report bias``: the bias study of the runs under a results folder (``report.bias``), written as
tables (CSV, ``bias.md``) and figures (``report.bias_figures``) to ``<results>/bias``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_bytes
from ..errors import require_writable_folder
from .bias import OUT_DIR, BiasStudy, bias_study, is_bias_task, to_markdown
from .bias_figures import write_bias_figures
from .collect import collect
from .select import check_duplicate_seeds

log = logging.getLogger("transferbench")


@dataclass(frozen=True)
class BiasReport:
    """What :func:`bias_report` wrote: the tables (CSV and Markdown) and the figures (PNG and PDF)."""

    out_dir: Path
    tables: list[Path]
    figures: list[Path]
    summary: str

    @property
    def paths(self) -> list[Path]:
        return [*self.tables, *self.figures]


def bias_report(results: str | Path, out_dir: str | Path | None = None, *, identities: Sequence[str] | None = None,
                latest: bool = False) -> BiasReport:
    """``transferbench report bias``: the study of the CelebA-style runs under ``results``, written to ``out_dir``
    (default ``<results>/bias``): the tables as CSV, ``bias.md`` and the figures. ``latest``: a seed repeated under
    one protocol counts once, the newest run (default: an error). Nothing is written when there is nothing to
    study."""
    results = Path(results)
    out = Path(out_dir) if out_dir is not None else results / OUT_DIR
    require_writable_folder(out, "--out")
    runs = collect(results).runs
    if len(runs):  # a repeated seed of another task's runs is the transfer report's concern, not this one's
        runs = runs[runs["task"].map({t: is_bias_task(t) for t in runs["task"].unique()}).astype(bool)]
    study = bias_study(check_duplicate_seeds(runs, latest), identities, where=f"under {results} (--results)")
    return write_bias(study, out)


def write_bias(study: BiasStudy, out_dir: str | Path) -> BiasReport:
    """Every table of ``study`` as CSV, ``bias.md`` and the figures, under ``out_dir``."""
    out = Path(out_dir)
    frames = {"attributes": study.attributes, "runs": study.runs, "summary": study.summary,
              "criteria": study.criteria, "flags": study.flags, "pies": study.pies,
              "pie_attributes": study.pie_attributes, "skipped": study.skipped}
    tables = [write_bytes(out / f"{name}.csv", frame.to_csv(index=False).encode()) for name, frame in frames.items()]
    tables.append(write_bytes(out / "bias.md", to_markdown(study).encode()))
    figures = write_bias_figures(study, out)
    log.info("wrote %d bias-study file(s) to %s", len(tables) + len(figures), out)
    return BiasReport(out, tables, figures, study.describe())
