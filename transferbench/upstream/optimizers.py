"""The optimizer of an upstream run, from its recipe's ``optimizer:`` section.

``kind: sgd`` (the default, every published ImageNet recipe) is SGD with ``momentum`` and ``weight_decay``;
``kind: adam`` is torch's Adam with its default betas and eps and ``weight_decay`` (default 0), as the CelebA bias
study's post-training GMP runs (``celeba_*_postgmps*_ep80_adam_lr0001.yaml``: ``class: Adam, lr: 0.0001``,
bias_analysis.md §1.3). The loop sets every group's ``lr`` at each step from the recipe's schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

# The settings each kind reads besides lr; a key of another kind's is a recipe error (recipes._check_run), not a
# silently ignored number.
OPTIMIZER_SETTINGS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "weight_decay", "nesterov"),
    "adam": ("weight_decay",),
}
OPTIMIZER_KINDS = tuple(OPTIMIZER_SETTINGS)
DEFAULT_KIND = "sgd"


def optimizer_kind(config: dict[str, Any] | None) -> str:
    """The ``kind`` of an ``optimizer:`` section (``sgd`` when it names none)."""
    return str((config or {}).get("kind", DEFAULT_KIND))


def _sgd(params: Iterable[torch.nn.Parameter], config: dict[str, Any]) -> torch.optim.Optimizer:
    # nesterov is switched on by pruning.factory (it checks the momentum the flag needs)
    return torch.optim.SGD(params, lr=float(config["lr"]), momentum=float(config.get("momentum", 0.0)),
                           weight_decay=float(config.get("weight_decay", 0.0)))


def _adam(params: Iterable[torch.nn.Parameter], config: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=float(config["lr"]), weight_decay=float(config.get("weight_decay", 0.0)))


BUILDERS: dict[str, Callable[[Iterable[torch.nn.Parameter], dict[str, Any]], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
}


def make_optimizer(params: Iterable[torch.nn.Parameter], config: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer an ``optimizer:`` section (checked by ``recipes._check_run``) describes."""
    return BUILDERS[optimizer_kind(config)](params, config)
