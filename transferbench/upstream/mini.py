"""The offline mini-suite's upstream models (resnet_tiny, small_cpu recipe): trained on first need by the explicit
upstream stage of a sweep or the demo, or by `run --train-missing`; never by planning, never unasked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from ..checkpoints import list_checkpoints, lookup_checkpoint
from ..checkpoints.registry import method_for_arch
from ..checkpoints.resolve import resolve_checkpoint
from ..errors import TransferbenchError
from ..pruning.factory import METHODS
from ..runspec import CheckpointRef
from ..vocabulary import format_sparsity, normalize_sparsity
from .recipes import SEVERAL_SPARSITIES
from .train import train_upstream

log = logging.getLogger("transferbench")

MINI_ARCH, MINI_RECIPE, MINI_DEFAULT_SPARSITY = "resnet_tiny", "small_cpu", 0.9
ONE_MODEL_MANY_SPARSITIES = SEVERAL_SPARSITIES  # one run of train_upstream makes each of its sparsities


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def mini_checkpoint_missing(method: str, sparsity: float | None, arch: str | None = None) -> bool:
    """Whether the mini-suite upstream model of ``method`` is not registered yet (and ``upstream`` can train it)."""
    method = method_for_arch(method, arch or MINI_ARCH, trainable=METHODS)  # a sweep's lth_t is lth (vocabulary)
    sparsity = _mini_sparsity(method, sparsity)
    return method in METHODS and lookup_checkpoint(method, sparsity, arch or MINI_ARCH) is None


def ensure_mini_checkpoint(method: str, sparsity: float | None, arch: str | None = None, *,
                           train_missing: bool = False, echo: Callable[[str], None] = _to_stderr) -> CheckpointRef:
    """For the offline mini-tasks: the registered upstream model of ``method``. When there is none yet it is
    trained now (small_cpu recipe, seconds to minutes on a CPU) only if ``train_missing`` (`run --train-missing`),
    after ``echo`` says what and how long it took last time; else a one-line error saying the same and how to
    ask for it. An explicit stage: planning never calls this."""
    arch = arch or MINI_ARCH
    method = method_for_arch(method, arch, trainable=METHODS)  # lth_t → lth; rigl stays rigl (vocabulary)
    chosen = _mini_sparsity(method, sparsity)
    if mini_checkpoint_missing(method, chosen, arch):
        what = missing_model_line(method, chosen, arch, defaulted=sparsity is None)
        if not train_missing:
            raise TransferbenchError(f"{what}; pass --train-missing to train it now, or train it first with "
                                     f"`transferbench upstream --method {method} --sparsity {format_sparsity(chosen)} "
                                     f"--arch {arch}`")
        echo(f"{what}: training it now (--train-missing)")
    elif sparsity is None and method != "dense":
        echo(f"--sparsity not given: {method} at the mini-suite's default {format_sparsity(chosen)}")
    train_mini_checkpoints(method, [chosen], arch)
    return resolve_checkpoint(method, chosen, arch, None)


def missing_model_line(method: str, sparsity: float, arch: str = MINI_ARCH, defaulted: bool = False) -> str:
    """What training the missing mini-suite model would be, with how long the last one took here."""
    which = " (the mini-suite's default; --sparsity chooses)" if defaulted else ""
    return (f"no {method} upstream model at {format_sparsity(sparsity)}{which} is registered for {arch}; training one "
            f"with the {MINI_RECIPE} recipe on this machine {last_training_time(method, arch)}")


def last_training_time(method: str, arch: str = MINI_ARCH, recipe: str = MINI_RECIPE) -> str:
    """How long the newest registered model of ``recipe`` on ``arch`` took to train here, preferring ``method``'s
    (``train_seconds`` of its checkpoint metadata), as words: "took 62 s last time, for gmp 90%"."""
    timed = []
    for spec in list_checkpoints():
        if spec.source != "local" or spec.arch != arch or not spec.path or f"({recipe} recipe," not in spec.notes:
            continue
        seconds = _train_seconds(Path(spec.path))
        if seconds is not None:
            timed.append((spec.method == method, Path(spec.path).stat().st_mtime, seconds, spec))
    if not timed:
        return "has not been timed yet"
    *_, seconds, spec = max(timed, key=lambda t: t[:2])
    return f"took {seconds:.0f} s last time, for {spec.method} {format_sparsity(spec.sparsity)}"


def _train_seconds(path: Path) -> float | None:
    import torch

    try:
        metadata = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("metadata", {})
        return float(metadata["train_seconds"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError):
        return None


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
