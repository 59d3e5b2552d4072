"""Flags that several commands share, spelled once: ``--results`` names the results root in every command.

``--out`` names output folders only (upstream's checkpoints, data convert's files, compare's and report
beyond's tables). Until 0.2 it still names the results root where it did before (run, sweep, status, demo),
with a one-line deprecation note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

OUT_DEPRECATION = "note: --out is deprecated for the results root; use --results"


class _DeprecatedResultsOut(argparse.Action):
    """``--out`` where it meant the results root: stores into ``results`` and notes the new spelling once."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if not getattr(namespace, "_noted_deprecated_out", False):  # once, however often --out is given
            print(OUT_DEPRECATION, file=sys.stderr)
            namespace._noted_deprecated_out = True
        setattr(namespace, self.dest, values)


def add_results_flag(parser: argparse.ArgumentParser, default: Path = Path("results"),
                     help: str = "results root (default {default}/)", deprecated_out: bool = True) -> None:
    """``--results DIR`` (into ``args.results``); with ``deprecated_out``, the old spelling ``--out`` too,
    hidden from the help."""
    parser.add_argument("--results", type=Path, default=default, help=help.format(default=default))
    if deprecated_out:
        parser.add_argument("--out", dest="results", type=Path, action=_DeprecatedResultsOut, help=argparse.SUPPRESS)
