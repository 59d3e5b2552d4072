"""Progress bars for people, grep-able log lines for clusters."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("SLURM_JOB_ID")


def progress(iterable: Iterable[T], **kwargs) -> Iterable[T]:
    """tqdm when attached to a terminal; the iterable itself in CI, SLURM jobs and pipes.

    Plain ``tqdm`` rather than ``tqdm.auto``: the latter's asyncio variant calls ``iter()`` on construction, which
    for a DataLoader with workers starts a throwaway set of worker processes and draws from its generator.
    """
    if not interactive():
        return iterable
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    """transferbench's own lines only (libraries such as fontTools log at INFO too)."""
    logger = logging.getLogger("transferbench")
    for old in [h for h in logger.handlers if getattr(h, "_transferbench", False)]:
        logger.removeHandler(old)  # bound to an earlier sys.stderr (a second main() in one process)
    handler = logging.StreamHandler(sys.stderr)
    handler._transferbench = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s transferbench %(levelname)s %(message)s",
                                           datefmt="%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
