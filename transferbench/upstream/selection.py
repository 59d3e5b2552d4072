"""Which epoch's model an upstream run registers when its data has a validation split (CelebA, faces).

The CelebA bias study keeps, besides the last epoch, a "best sparse" checkpoint: the epoch with the best validation
score among the epochs at the highest sparsity reached so far (IST-DASLab ``policies/manager.py`` L618-631,
bias_analysis.md §1.3). So a sparser epoch always replaces the kept one, whatever its score, and among epochs of
equal sparsity a strictly better score does (the earlier epoch wins a tie). A dense run keeps its best-validation
epoch. That is the checkpoint registered here, with the rule, epoch, score and sparsity in its metadata.

For AC/DC every compressed phase is at the target sparsity, so an intermediate compressed epoch can be chosen if it
validates best, as in the study's code. Data without a validation split registers the last epoch, as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SELECTION_RULE = ("best validation score among the epochs at the highest sparsity reached (IST-DASLab's best "
                  "sparse checkpoint)")
# Two mask sparsities closer than this are one level: the same masks always measure the same, and no two GMP or
# AC/DC levels of a real model are this close.
SAME_SPARSITY = 1e-9


class BestCheckpoint:
    """The kept epoch of ``SELECTION_RULE``: its weights and masks (host copies), epoch, sparsity and score, and
    every offered epoch's (epoch, mask sparsity, validation score), recorded with the checkpoint."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.sparsity = -math.inf
        self.score = -math.inf
        self.weights: dict[str, torch.Tensor] | None = None
        self.masks: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float, float]] = []

    def offer(self, epoch: int, sparsity: float, score: float, model: nn.Module,
              masks: dict[str, torch.Tensor]) -> bool:
        """Keep this epoch's model if the rule prefers it to the kept one; returns whether it did."""
        self.history.append((int(epoch), float(sparsity), float(score)))
        sparser = sparsity > self.sparsity + SAME_SPARSITY
        same_level = abs(sparsity - self.sparsity) <= SAME_SPARSITY
        if not (sparser or (same_level and score > self.score)):
            return False
        self.epoch, self.sparsity, self.score = int(epoch), float(sparsity), float(score)
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.masks = {k: v.detach().to("cpu", copy=True) for k, v in masks.items()}
        return True

    def restore(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the kept weights into ``model``; returns the kept masks on the model's device."""
        if self.weights is None or self.masks is None:
            raise RuntimeError("no epoch was kept: offer() was never called")
        model.load_state_dict(self.weights)
        device = next(model.parameters()).device
        return {k: v.to(device) for k, v in self.masks.items()}

    def metadata(self) -> dict[str, Any]:
        """What the registered checkpoint records about its choice."""
        return {"rule": SELECTION_RULE, "epoch": self.epoch, "validation_score": self.score,
                "mask_sparsity": self.sparsity, "epochs": [list(row) for row in self.history]}

    def state_dict(self) -> dict[str, Any]:
        """Part of the run's resume state (``upstream.state``), so a resumed run chooses as an uninterrupted one."""
        return {"epoch": self.epoch, "sparsity": self.sparsity, "score": self.score, "weights": self.weights,
                "masks": self.masks, "history": [list(row) for row in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.sparsity, self.score = state["epoch"], float(state["sparsity"]), float(state["score"])
        self.weights, self.masks = state["weights"], state["masks"]
        self.history = [(int(e), float(sp), float(score)) for e, sp, score in state["history"]]
