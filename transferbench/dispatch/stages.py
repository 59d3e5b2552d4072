"""The stages of a sweep that come before its transfer jobs. Planning (``plan_sweep``) is pure; a stage makes
what the plan found missing, and is always called explicitly (by ``sweep`` before it plans the jobs it submits)."""

from __future__ import annotations

import logging
import time

from ..upstream import MINI_ARCH, ensure_mini_checkpoint, mini_checkpoint_missing
from .sweep import CheckpointEntry, SweepSpec

log = logging.getLogger("transferbench")


def missing_upstream(sweep: SweepSpec) -> list[CheckpointEntry]:
    """The mini-suite upstream models the sweep names that are not registered yet (the stage's work)."""
    return [e for e in sweep.checkpoints
            if not e.path and e.arch == MINI_ARCH and mini_checkpoint_missing(e.method, e.sparsity, e.arch)]


def prepare_upstream(sweep: SweepSpec, echo=print) -> list[CheckpointEntry]:
    """Train and register the sweep's missing mini-suite upstream models (small_cpu recipe, on this machine);
    returns the entries it trained. Paper-scale checkpoints are never trained here: they are downloaded or
    produced with `transferbench upstream`."""
    todo = missing_upstream(sweep)
    for i, entry in enumerate(todo, 1):
        echo(f"[upstream {i}/{len(todo)}] training {entry.label} (small_cpu recipe) ...")
        start = time.perf_counter()
        ensure_mini_checkpoint(entry.method, entry.sparsity, entry.arch)
        echo(f"[upstream {i}/{len(todo)}] {entry.label} ready ({time.perf_counter() - start:.0f} s)")
    return todo
