"""GMP — gradual magnitude pruning with the cubic schedule of Zhu & Gupta 2017 (pruning_methods.md §1).

Schedules are in optimizer steps, so the ImageNet recipes (§1.2, in epochs) and the CPU recipe (§1.3, §9) run
through the same code: convert epochs with ``epoch * steps_per_epoch``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from . import masks as M
from .base import Pruner
from .magnitude import Scope, check_scope, magnitude_masks


def cubic_sparsity(t: float, s_i: float, s_f: float, t0: float, t_end: float, degree: int = 3) -> float:
    """Zhu & Gupta eq. 1 (§1.1): ``s_f + (s_i − s_f)·(1 − p)^degree`` with ``p = clamp((t − t0)/(t_end − t0), 0, 1)``.

    ``s(t0) = s_i``, non-decreasing, and ``s(t) = s_f`` for every ``t ≥ t_end``.
    """
    if t_end < t0:
        raise ValueError(f"t_end ({t_end}) must not precede t0 ({t0})")
    # the ends are returned as given, not through the formula, so s(t0) == s_i and s(t_end) == s_f bit for bit
    if t >= t_end:
        return s_f
    if t <= t0:
        return s_i
    p = (t - t0) / (t_end - t0)
    return s_f + (s_i - s_f) * (1.0 - p) ** degree


def gmp_prune_steps(t0: int, t_end: int, prune_every: int) -> list[int]:
    """Mask-update steps ``t0, t0+Δt, …`` up to ``t_end``, with ``t_end`` itself always included (§1.1: "make
    t0 + nΔt == t_end so the last step hits s_f exactly"; IST's ``range(1, 40, 5)`` stops short of s_f, §1.2 b)."""
    if prune_every < 1:
        raise ValueError(f"prune_every must be ≥ 1, got {prune_every}")
    if not 0 <= t0 <= t_end:
        raise ValueError(f"need 0 ≤ t0 ≤ t_end, got t0={t0}, t_end={t_end}")
    steps = list(range(t0, t_end + 1, prune_every))
    if steps[-1] != t_end:
        steps.append(t_end)
    return steps


def gmp_scaled_schedule(total_steps: int, start: float = 0.2, end: float = 0.6, n_updates: int = 8) -> dict[str, int]:
    """The CPU-scale GMP knobs of §1.3/§9 (t0 = 0.2·S, t_end = 0.6·S, n = 8 updates after t0) as ``GMPPruner``
    keyword arguments; ``t_end`` is moved onto the update grid so that ``t_end = t0 + n·Δt`` exactly."""
    t0 = math.floor(start * total_steps)
    prune_every = max(1, round((end * total_steps - t0) / n_updates))
    t_end = t0 + n_updates * prune_every
    if t_end >= total_steps:
        raise ValueError(f"{total_steps} steps are too few for {n_updates} updates between {start} and {end} of S")
    return {"t0": t0, "t_end": t_end, "prune_every": prune_every}


class GMPPruner(Pruner):
    """Gradual magnitude pruning (§1.1): at each update step the mask becomes the top-k of ``|W|·M_prev`` at the
    cubic-schedule sparsity, so the masks are nested and a pruned weight never returns; between updates and after
    ``t_end`` the mask is fixed (gradients masked, weights re-masked after every step).

    ``scope="global"`` is the IST-DASLab baseline (§1.2 b), ``"layerwise"`` Zhu & Gupta / Gale et al. (§1.2 a).
    Updates happen in ``before_step`` at the steps of ``gmp_prune_steps(t0, t_end, prune_every)``; the last one
    (``t_end``) reaches ``target_sparsity`` exactly.
    """

    method = "gmp"

    def __init__(self, model: nn.Module, target_sparsity: float, total_steps: int, t0: int, t_end: int,
                 prune_every: int, initial_sparsity: float = 0.0, scope: Scope = "global", include_head: bool = True,
                 exclude: tuple[str, ...] = ()):
        check_scope(scope)
        if t_end >= total_steps:
            raise ValueError(f"t_end ({t_end}) must be a step of the run (< total_steps = {total_steps})")
        if not 0.0 <= initial_sparsity <= target_sparsity <= 1.0:
            raise ValueError(f"need 0 ≤ initial_sparsity ≤ target_sparsity ≤ 1, got {initial_sparsity}, "
                             f"{target_sparsity}")
        super().__init__(model, target_sparsity, total_steps, include_head=include_head, exclude=exclude)
        self.initial_sparsity = float(initial_sparsity)
        self.t0, self.t_end, self.prune_every = int(t0), int(t_end), int(prune_every)
        self.scope = scope
        self.prune_steps = gmp_prune_steps(self.t0, self.t_end, self.prune_every)
        self._prune_set = frozenset(self.prune_steps)

    @classmethod
    def from_epochs(cls, model: nn.Module, target_sparsity: float, steps_per_epoch: int, total_epochs: int,
                    start_epoch: int, end_epoch: int, prune_every_epochs: int, **kwargs: Any) -> GMPPruner:
        """An epoch-based recipe (§1.2: IST ``epochs: [start, every, end]``, STR per-epoch updates) in steps:
        updates on the first step of epochs ``start, start+every, …`` and of ``end_epoch``, where s_f is reached
        (unlike IST's ``range(start, end, every)``, which stops short of it)."""
        return cls(model, target_sparsity, total_epochs * steps_per_epoch, t0=start_epoch * steps_per_epoch,
                   t_end=end_epoch * steps_per_epoch, prune_every=prune_every_epochs * steps_per_epoch, **kwargs)

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, self.initial_sparsity, self.target_sparsity, self.t0, self.t_end)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        if step in self._prune_set:
            self.set_masks(magnitude_masks(self.params, self.sparsity_at(step), self.scope, within=self.masks))

    def reached_target(self) -> bool:
        """Whether the masks are at ``target_sparsity`` (the update at ``t_end`` has run)."""
        if self.scope == "global":
            numel = sum(m.numel() for m in self.masks.values())
            return sum(int(m.sum()) for m in self.masks.values()) <= M.n_keep(numel, self.target_sparsity)
        return all(int(m.sum()) <= M.n_keep(m.numel(), self.target_sparsity) for m in self.masks.values())

    def finalize(self) -> None:
        super().finalize()
        # a loop cut short of t_end would otherwise hand out a checkpoint below its nominal sparsity silently
        if not self.reached_target():
            warnings.warn(f"GMP finished at sparsity {self.sparsity:.4f} < target {self.target_sparsity} "
                          f"(the loop stopped before t_end = {self.t_end})", stacklevel=2)
