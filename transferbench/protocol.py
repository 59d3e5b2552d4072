"""Whether a run followed the paper's protocol exactly: ``protocol_deviations``, the one place that decides.

A run follows the paper (``PAPER``) when it is one of the paper's tasks and every hyper-parameter that can change
its numbers is the protocol's default for its task and mode (``runspec.resolve_hparams`` without overrides):
150 epochs, batch 64, the task's learning rate, SGD, 224 px, fp32, the torchvision loader, the torch engine, the
whole splits. Anything else is a deviation, written ``name=value`` (``epochs=8``, ``precision=bf16``,
``loader=ffcv``, ``limit=100``). Conventions:

* ``interpolation`` left empty is the architecture's own (bicubic for RigL, pitfall P9): not a deviation; set
  explicitly it is one, even to the architecture's own value (the run key differs, and telling the two apart
  would need the model registry, which loads torch);
* changing only ``epochs`` moves the decay points with it (``resolve_hparams``): ``epochs=8`` alone, not also
  ``lr_decay_after``;
* ``eval_every`` only decides how often the test split is scored, never the training: not a deviation;
* the ``lbfgs_*`` settings count only with ``solver=lbfgs`` (itself a deviation: the paper trains heads with SGD);
* a mini-task (``kind: mini`` on its card) is never the paper's protocol: ``task=NAME(mini)``; its native image
  size is not a further deviation.

Torch-free (the store and the report commands call it); ``runspec`` is imported in the function because
``runspec`` imports the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from .errors import TransferbenchError
from .store.record import PAPER_PROTOCOL as PAPER  # the ``protocol`` of a run that followed the paper exactly

_NOT_DEVIATIONS = ("eval_every",)
_LBFGS_ONLY = ("lbfgs_c_grid", "lbfgs_holdout", "lbfgs_max_iter")


def protocol_deviations(task: str, mode: str, hparams: Mapping[str, Any] | None) -> list[str]:
    """The ways a run of ``task`` under ``mode`` with ``hparams`` (``HParams.to_dict()``, or a record's stored
    ``config["hparams"]``) departs from the paper's protocol, as ``name=value`` texts in field order; ``[]`` when it
    follows it exactly. Fields a stored dict lacks were written before they existed, at their default."""
    try:
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (hparams or {}).items()))
        return list(_cached_deviations(task, mode, frozen))  # a store's records share a few settings: µs each
    except TypeError:  # an unhashable stored value (a nested dict): no cache
        return _deviations(task, mode, dict(hparams or {}))


@lru_cache(maxsize=4096)
def _cached_deviations(task: str, mode: str, frozen: tuple) -> tuple[str, ...]:
    return tuple(_deviations(task, mode, dict(frozen)))


def _deviations(task: str, mode: str, values: dict[str, Any]) -> list[str]:
    from .runspec import HParams, resolve_hparams
    from .tasks import get_task

    try:
        card = get_task(task)  # a card or a variant of one (celeba-blond_hair)
    except TransferbenchError:
        card = None  # a record of a task no card describes any more
    deviations = [f"task={task}({card.kind})"] if card is not None and card.kind != "paper" else []
    # the decay points the protocol gives these epochs: a shortened run deviates by its epochs alone
    overrides = {"epochs": values["epochs"]} if _is_int(values.get("epochs")) else {}
    full_lr = card.full_lr if card is not None else math.nan  # an unknown task's full LR cannot be judged
    try:
        paper = resolve_hparams(mode, full_lr, overrides).to_dict()
    except (TransferbenchError, ValueError, TypeError):  # an impossible stored value: the plain defaults instead
        paper = HParams().to_dict()
    if isinstance(paper["lr"], float) and math.isnan(paper["lr"]):
        del paper["lr"]
    if card is not None:
        paper["image_size"] = card.image_size  # a mini-task's native size: it is already not the paper's
    paper["epochs"] = HParams().epochs
    for name, default in paper.items():
        if name in _NOT_DEVIATIONS or name not in values:
            continue
        if name in _LBFGS_ONLY and values.get("solver") != "lbfgs":
            continue
        if not _equal(values[name], default):
            deviations.append(f"{name}={_text(values[name])}")
    return deviations


def protocol_label(deviations: list[str] | tuple[str, ...]) -> str:
    """``"paper"``, or the deviations joined by ``"; "`` (the ``protocol`` column of collected runs)."""
    return "; ".join(deviations) if deviations else PAPER


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _equal(value: Any, default: Any) -> bool:
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            return False
        return all(_equal(v, d) for v, d in zip(value, default, strict=True))
    if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return math.isclose(float(value), default, rel_tol=1e-9, abs_tol=0.0)
    return value == default


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
