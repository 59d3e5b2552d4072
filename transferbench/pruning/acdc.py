"""AC/DC — Alternating Compressed / DeCompressed training (Peste et al., NeurIPS 2021; pruning_methods.md §5).

Phases are given in epochs, as in the AC/DC configs, and turned into steps with ``steps_per_epoch``; a CPU run
with fewer real epochs can use "schedule epochs" of a few steps each.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import masks as M
from .base import Pruner
from .base import reset_momentum as zero_momentum_buffers
from .magnitude import Scope, check_scope, magnitude_masks


def acdc_is_compressed(epoch: int, prune_epochs: Iterable[int], restore_epochs: Iterable[int]) -> bool:
    """True when the latest phase event at or before ``epoch`` is a prune (§5.1 ``is_compressed``)."""
    prune = set(prune_epochs)
    events = [e for e in (*prune, *restore_epochs) if e <= epoch]
    return bool(events) and max(events) in prune


@dataclass(frozen=True)
class ACDCSchedule:
    """An AC/DC phase layout: compressed phases start at ``prune_epochs``, dense ones at ``restore_epochs``."""

    epochs: int
    prune_epochs: frozenset[int]
    restore_epochs: frozenset[int]

    def is_compressed(self, epoch: int) -> bool:
        return acdc_is_compressed(epoch, self.prune_epochs, self.restore_epochs)

    def phases(self) -> list[tuple[int, int, bool]]:
        """``(first_epoch, last_epoch, compressed)`` for each phase, the dense warm-up included."""
        starts = sorted({0} | self.prune_epochs | self.restore_epochs)
        ends = [*starts[1:], self.epochs]
        return [(a, b - 1, self.is_compressed(a)) for a, b in zip(starts, ends, strict=True)]


def acdc_imagenet_schedule(epochs: int = 100) -> ACDCSchedule:
    """The ImageNet ResNet-50 phases of §5.1 (``iht_imagenet_resnet50_*_ep100.yaml``): prune at 10, 20, …, 70 and
    85, restore at 15, …, 65 and 75 — 10 dense warm-up epochs, 5-epoch phases, a 10-epoch last dense phase (75–84)
    and a 15-epoch final compressed phase (85–99). ``epochs=200`` gives the ``_ep200`` variant of §5.2."""
    if epochs == 100:
        return ACDCSchedule(100, frozenset(range(10, 71, 10)) | {85}, frozenset(range(15, 66, 10)) | {75})
    if epochs == 200:
        return ACDCSchedule(200, frozenset(range(10, 171, 10)) | {185}, frozenset(range(15, 166, 10)) | {175})
    raise ValueError(f"the AC/DC ImageNet configs have 100 or 200 epochs, not {epochs}")


def acdc_scaled_schedule(epochs: int = 10) -> ACDCSchedule:
    """The CPU-scale phases of §5.3 — for 10 epochs: dense 0–1, compressed 2, 4, 6, dense 3, 5, 7, final compressed
    8–9 — stretched to ``epochs`` keeping the ratios (phase boundaries at round(k·epochs/10), k = 2…8)."""
    bounds = [math.floor(k * epochs / 10 + 0.5) for k in range(2, 9)]
    if len(set(bounds)) < len(bounds) or bounds[0] < 1 or bounds[-1] >= epochs:
        raise ValueError(f"{epochs} epochs cannot hold the 8 AC/DC phases; use ≥ 10 (shorter schedule epochs)")
    return ACDCSchedule(epochs, frozenset(bounds[0::2]), frozenset(bounds[1::2]))


class ACDCPruner(Pruner):
    """AC/DC as training-loop hooks (§5.1).

    On the first step of a prune epoch the mask becomes the top-k of the current |W| at ``target_sparsity`` (global
    over every prunable weight, head included, by default; ``scope="layerwise"`` with ``exclude=("conv1",)`` and
    ``include_head=False`` is the "uniform" variant of §5.2); within the compressed phase it stays fixed. On the
    first step of a restore epoch the mask becomes all ones — pruned weights re-enter at 0 — and, with
    ``reset_momentum``, the SGD momentum buffers are zeroed before that step's update (``--reset_momentum_after_
    recycling``). Pass the optimizer to ``before_step``.

    Dense/sparse pair (§5.1): when the run ends with a compressed phase, ``dense_state`` holds the model state at
    the end of the last decompressed phase (taken just before the final prune; ``keep_dense_snapshot``). The AC/DC
    dense model is that state fine-tuned dense for the remaining epochs (``..._ftdense.yaml``; §10 item 6); the
    sparse model is the final one. ``mask_changes`` logs (epoch, relative Hamming distance to the previous
    compressed mask) — the manager's "relative mask difference" (§5.4).
    """

    method = "acdc"

    def __init__(self, model: nn.Module, target_sparsity: float, steps_per_epoch: int, prune_epochs: Iterable[int],
                 restore_epochs: Iterable[int], reset_momentum: bool = True, scope: Scope = "global",
                 include_head: bool = True, exclude: tuple[str, ...] = (), keep_dense_snapshot: bool = True,
                 total_epochs: int | None = None):
        check_scope(scope)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be ≥ 1, got {steps_per_epoch}")
        self.prune_epochs, self.restore_epochs = frozenset(prune_epochs), frozenset(restore_epochs)
        if self.prune_epochs & self.restore_epochs:
            raise ValueError(f"epochs {sorted(self.prune_epochs & self.restore_epochs)} both prune and restore")
        super().__init__(model, target_sparsity, (total_epochs or 0) * steps_per_epoch, include_head=include_head,
                         exclude=exclude)
        self.steps_per_epoch = int(steps_per_epoch)
        self.reset_momentum = reset_momentum
        self.scope = scope
        self.keep_dense_snapshot = keep_dense_snapshot
        events = self.prune_epochs | self.restore_epochs
        # the final compressed phase, if the schedule ends with one: its start is where the dense model is taken
        self._final_prune = max(events) if events and max(events) in self.prune_epochs else None
        self.dense_state: dict[str, torch.Tensor] | None = None
        self.mask_changes: list[tuple[int, float]] = []
        self._previous_sparse: M.Masks | None = None

    @classmethod
    def from_schedule(cls, model: nn.Module, target_sparsity: float, steps_per_epoch: int, schedule: ACDCSchedule,
                      **kwargs: Any) -> ACDCPruner:
        return cls(model, target_sparsity, steps_per_epoch, schedule.prune_epochs, schedule.restore_epochs,
                   total_epochs=schedule.epochs, **kwargs)

    def is_compressed(self, epoch: int) -> bool:
        return acdc_is_compressed(epoch, self.prune_epochs, self.restore_epochs)

    def compress(self, epoch: int) -> None:
        if epoch == self._final_prune and self.keep_dense_snapshot:
            self.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        # the mask was all ones in the dense phase, so this is a fresh top-k of the current weights, not nested
        masks = magnitude_masks(self.params, self.target_sparsity, self.scope)
        if self._previous_sparse is not None:
            changed = sum(int((masks[n] != self._previous_sparse[n]).sum()) for n in masks)
            self.mask_changes.append((epoch, changed / sum(m.numel() for m in masks.values())))
        self._previous_sparse = masks
        self.set_masks(masks)

    def decompress(self, optimizer: torch.optim.Optimizer | None) -> None:
        self.masks = M.dense_masks(self.params)  # pruned weights are 0 already: they re-enter at 0
        if self.reset_momentum:
            if optimizer is None:
                raise ValueError("ACDCPruner.before_step needs the optimizer to reset momentum at decompression")
            zero_momentum_buffers(optimizer)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        if step % self.steps_per_epoch:
            return
        epoch = step // self.steps_per_epoch
        if epoch in self.prune_epochs:
            self.compress(epoch)
        elif epoch in self.restore_epochs:
            self.decompress(optimizer)

    def finalize(self) -> None:
        super().finalize()
        if self.target_sparsity > 0 and all(bool(m.all()) for m in self.masks.values()):
            warnings.warn("AC/DC ended in a decompressed phase, so the model is dense; the schedule should end "
                          "with a compressed phase", stacklevel=2)

    def state_dict(self) -> dict[str, Any]:
        dense = None if self.dense_state is None else {k: v.cpu() for k, v in self.dense_state.items()}
        return {**super().state_dict(), "dense_state": dense}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dense_state = state.get("dense_state")
