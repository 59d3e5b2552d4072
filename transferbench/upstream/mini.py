"""The offline mini-suite's upstream models (resnet_tiny, small_cpu recipe): trained on first need by the explicit
upstream stage of a sweep or the demo, never by planning."""

from __future__ import annotations

import logging

from ..checkpoints import lookup_checkpoint
from ..checkpoints.registry import method_for_arch
from ..checkpoints.resolve import resolve_checkpoint
from ..pruning.factory import METHODS
from ..runspec import CheckpointRef
from ..vocabulary import format_sparsity, normalize_sparsity
from .recipes import SEVERAL_SPARSITIES
from .train import train_upstream

log = logging.getLogger("transferbench")

MINI_ARCH, MINI_RECIPE, MINI_DEFAULT_SPARSITY = "resnet_tiny", "small_cpu", 0.9
ONE_MODEL_MANY_SPARSITIES = SEVERAL_SPARSITIES  # one run of train_upstream makes each of its sparsities


def mini_checkpoint_missing(method: str, sparsity: float | None, arch: str | None = None) -> bool:
    """Whether the mini-suite upstream model of ``method`` is not registered yet (and ``upstream`` can train it)."""
    method = method_for_arch(method, arch or MINI_ARCH, trainable=METHODS)  # a sweep's lth_t is lth (vocabulary)
    sparsity = _mini_sparsity(method, sparsity)
    return method in METHODS and lookup_checkpoint(method, sparsity, arch or MINI_ARCH) is None


def ensure_mini_checkpoint(method: str, sparsity: float | None, arch: str | None = None) -> CheckpointRef:
    """For the offline mini-tasks: the registered upstream model of ``method``, trained now (small_cpu recipe,
    seconds to minutes on a CPU) when there is none yet. An explicit stage: planning never calls this."""
    arch = arch or MINI_ARCH
    method = method_for_arch(method, arch, trainable=METHODS)  # lth_t → lth; rigl stays rigl (vocabulary)
    sparsity = _mini_sparsity(method, sparsity)
    train_mini_checkpoints(method, [sparsity], arch)
    return resolve_checkpoint(method, sparsity, arch, None)


def train_mini_checkpoints(method: str, sparsities: list[float], arch: str = MINI_ARCH) -> list[float]:
    """Train and register the mini-suite models of ``method`` at those of ``sparsities`` that are missing; returns
    them. CrAM makes every candidate from one model (one-shot pruning + BN recalibration) and LTH-T every ticket
    from one IMP run, so their sparsities are trained together."""
    missing = [s for s in sparsities if mini_checkpoint_missing(method, s, arch)]
    batches = [missing] if method in ONE_MODEL_MANY_SPARSITIES and missing else [[s] for s in missing]
    for batch in batches:
        log.info("no %s upstream model at %s for %s yet: training one with the %s recipe (cached for later runs)",
                 method, ", ".join(format_sparsity(s) for s in batch), arch, MINI_RECIPE)
        train_upstream(method, batch, arch=arch, recipe=MINI_RECIPE)
    return missing


def _mini_sparsity(method: str, sparsity: float | None) -> float:
    if sparsity is None:
        return 0.0 if method == "dense" else MINI_DEFAULT_SPARSITY
    return normalize_sparsity(sparsity)
