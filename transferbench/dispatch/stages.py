"""The stages of a sweep that come before its transfer jobs. Planning (``plan_sweep``) is pure; a stage makes
what the plan found missing, and is always called explicitly (by ``sweep`` before it plans the jobs it submits)."""

from __future__ import annotations

import time

from ..upstream import MINI_ARCH, mini_checkpoint_missing, train_mini_checkpoints
from ..vocabulary import format_sparsity
from .sweep import CheckpointEntry, SweepSpec


def missing_upstream(sweep: SweepSpec) -> list[CheckpointEntry]:
    """The mini-suite upstream models the sweep names that are not registered yet (the stage's work)."""
    return [e for e in sweep.checkpoints
            if not e.path and e.arch == MINI_ARCH and mini_checkpoint_missing(e.method, e.sparsity, e.arch)]


def prepare_upstream(sweep: SweepSpec, echo=print) -> list[CheckpointEntry]:
    """Train and register the sweep's missing mini-suite upstream models (small_cpu recipe, on this machine);
    returns the entries it trained. Paper-scale checkpoints are never trained here: they are downloaded or
    produced with `transferbench upstream`. The sparsities of one method are trained together where the method
    makes them from one model (CrAM)."""
    todo = missing_upstream(sweep)
    by_method: dict[tuple[str, str], list[float]] = {}
    for entry in todo:
        by_method.setdefault((entry.method, entry.arch or MINI_ARCH), []).append(entry.sparsity)
    for i, ((method, arch), sparsities) in enumerate(by_method.items(), 1):
        what = f"{method} at {', '.join(format_sparsity(s) for s in sparsities)} ({arch}, small_cpu recipe)"
        echo(f"[upstream {i}/{len(by_method)}] training {what} ...")
        start = time.perf_counter()
        train_mini_checkpoints(method, sparsities, arch)
        echo(f"[upstream {i}/{len(by_method)}] {what} ready ({time.perf_counter() - start:.0f} s)")
    return todo
