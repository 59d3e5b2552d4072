"""Lottery tickets by iterative magnitude pruning with rewinding (pruning_methods.md §4).

Generic IMP (§4.1, Frankle et al.): train, prune 20% of the remaining weights globally, rewind the survivors to an
early-training snapshot θ_k, retrain, repeat. LTH-T (§4.2, Chen et al. CVPR 2021): the same with the rewind point
= the pre-trained weights θ_p, pruning every Conv2d except the stem (conv1 and fc dense); the transferred ticket is
θ_p ⊙ m. Both are ``LTHPruner`` driven by an ordinary loop of ``rounds × steps_per_round`` steps.

Each round removes ``round(rate · n_remaining)`` weights, the smallest |w| among those still kept, over the whole
prunable set at once: what Chen et al.'s ``prune.global_unstructured(L1Unstructured, amount=0.2)`` does on modules
that already carry a mask (PyTorch's PruningContainer applies the amount to the unpruned entries).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .. import sparsity as S
from . import masks as M
from .base import Pruner
from .magnitude import magnitude_masks

LTH_RATE = 0.2  # §4.1/§4.2: each round removes 20% of the weights still unpruned
LTH_PRUNABLE = "conv_except_first"  # §4.2: Chen et al. prune every Conv2d but conv1; fc stays dense


def lth_sparsity(rounds: int, rate: float = LTH_RATE) -> float:
    """Sparsity after ``rounds`` prunes of ``rate`` of the remaining weights: ``1 − (1 − rate)^rounds`` (§4.2)."""
    return S.iterative_sparsity(rounds, rate)


def rounds_for_sparsity(target: float, rate: float = LTH_RATE, at_least: bool = False) -> int:
    """Number of rounds whose sparsity ``1 − (1 − rate)^r`` is closest to ``target`` (§4.2 maps 80/90/95% to
    rounds 7/10/13: 79.0/89.3/94.5%); with ``at_least`` the fewest rounds that reach ``target``."""
    return S.rounds_for_sparsity(target, rate, at_least)


def kept_after(numel: int, rounds: int, rate: float = LTH_RATE) -> int:
    """Weights kept out of ``numel`` after ``rounds`` rounds that each remove ``round(rate · n_remaining)``."""
    kept = numel
    for _ in range(rounds):
        kept -= round(rate * kept)  # Python's round, as torch.nn.utils.prune's _compute_nparams_toprune
    return kept


def prune_remaining(params: dict[str, torch.Tensor], masks: M.Masks, rate: float) -> M.Masks:
    """Nested masks that drop ``round(rate · n_remaining)`` more weights: the smallest |w| among those ``masks``
    keep, one threshold over all of ``params`` (ties: lower position first, as every mask here)."""
    numel = sum(m.numel() for m in masks.values())
    remaining = sum(int(m.sum()) for m in masks.values())
    keep = remaining - round(rate * remaining)
    if keep == 0:
        return {name: torch.zeros_like(mask) for name, mask in masks.items()}
    # magnitude_masks keeps numel − floor(s·numel); half a weight of margin makes that floor exact in floating point
    return magnitude_masks(params, (numel - keep + 0.5) / numel, "global", within=masks)


class LTHPruner(Pruner):
    """Iterative magnitude pruning with weight rewinding as training-loop hooks (§4.1, §4.2).

    The run is ``rounds`` training rounds of ``steps_per_round`` steps. After the last step of round r (in
    ``after_step``) the pruner

    1. prunes ``round(rate · n_remaining)`` of the weights still kept, choosing by their *trained* magnitude over
       the whole prunable set (nested masks; ``prune_remaining``);
    2. rewinds the whole model state (weights, biases, BN statistics — Chen et al. reload θ_p, OpenLTH the full
       state) to the snapshot and re-applies the mask;
    3. clears the optimizer state, which is what IMP's fresh optimizer per round amounts to (momentum buffers empty).

    The snapshot is the model state at construction (``rewind_step=None``: the pre-trained θ_p of LTH-T, or θ_0) or
    the state before the update of step ``rewind_step`` of the first round (θ_k, Frankle et al.'s rewinding).
    ``prune_at_start`` is LTH-T's state 0: the first 20% is cut from the untrained θ_p before step 0, so the run
    has ``rounds − 1`` training rounds and ends with the ticket θ_p ⊙ m. Steps past ``total_steps`` train the
    final ticket with the mask fixed (IMP's last retraining). Restart the LR schedule where ``is_round_start``.

    ``prunable`` names the set of weights pruned (sparsity_rules.yaml); the default is LTH-T's: every Conv2d
    except conv1, fc dense.
    """

    method = "lth"

    def __init__(self, model: nn.Module, rounds: int, steps_per_round: int, rate: float = LTH_RATE,
                 rewind_step: int | None = None, prune_at_start: bool = False, prunable: str = LTH_PRUNABLE):
        if rounds < 1 or steps_per_round < 1:
            raise ValueError(f"need rounds ≥ 1 and steps_per_round ≥ 1, got {rounds}, {steps_per_round}")
        if not 0.0 < rate < 1.0:
            raise ValueError(f"need 0 < rate < 1, got {rate}")
        if rewind_step is not None and (prune_at_start or not 0 <= rewind_step < steps_per_round):
            raise ValueError("rewind_step must lie in the first training round (and cannot be combined with "
                             "prune_at_start, which rewinds to the starting weights)")
        self.rounds, self.steps_per_round, self.rate = int(rounds), int(steps_per_round), float(rate)
        self.prune_at_start = bool(prune_at_start)
        training_rounds = self.rounds - int(self.prune_at_start)
        super().__init__(model, 0.0, training_rounds * self.steps_per_round)
        self.prunable = prunable
        self.params = S.set_weights(model, prunable)
        if not self.params:
            raise ValueError(f"LTHPruner: the model has no weights in the prunable set {prunable!r}")
        self.masks = M.dense_masks(self.params)
        numel = sum(p.numel() for p in self.params.values())
        self.target_sparsity = 1.0 - kept_after(numel, self.rounds, self.rate) / numel
        self.rewind_step = rewind_step
        self.snapshot: dict[str, torch.Tensor] | None = self._state() if rewind_step is None else None
        self.pruned_rounds = 0
        self.round_masks: dict[int, M.Masks] = {}  # the masks after each prune (IMP's tickets at every sparsity)
        # after_step of the last step of each training round prunes; the keys are the round's prune number
        offset = 1 + int(self.prune_at_start)
        self._prune_after = {(j + 1) * self.steps_per_round - 1: j + offset for j in range(training_rounds)}

    @property
    def prune_steps(self) -> list[int]:
        """Steps after whose update a round ends with prune + rewind (LTH-T's start prune comes before step 0)."""
        return sorted(self._prune_after)

    def is_round_start(self, step: int) -> bool:
        """True at the first step of every training round: where IMP restarts the LR schedule (§4.2)."""
        return step % self.steps_per_round == 0 and step < self.total_steps

    def round_sparsities(self) -> list[float]:
        """The prunable set's sparsity after each round (exact counts, not 1 − 0.8^r)."""
        numel = sum(p.numel() for p in self.params.values())
        return [1.0 - kept_after(numel, r, self.rate) / numel for r in range(1, self.rounds + 1)]

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def prune_and_rewind(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """One IMP round boundary: prune 20% of the remaining weights, rewind, fresh optimizer state."""
        if self.snapshot is None:
            raise RuntimeError("LTHPruner: no rewind snapshot yet (rewind_step was never reached)")
        k = self.pruned_rounds + 1
        self.masks = prune_remaining(self.params, self.masks, self.rate)
        # load_state_dict copies into the existing tensors, so the optimizer keeps pointing at the live parameters
        self.model.load_state_dict(self.snapshot)
        M.apply(self.params, self.masks)
        if optimizer is not None:
            optimizer.state.clear()
        self.pruned_rounds = k
        self.round_masks[k] = {name: m.detach().cpu().clone() for name, m in self.masks.items()}

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        if step == 0 and self.prune_at_start and self.pruned_rounds == 0:
            self.prune_and_rewind(optimizer)
        if step == self.rewind_step and self.snapshot is None:
            self.snapshot = self._state()

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().after_step(step, optimizer)
        if self._prune_after.get(step) == self.pruned_rounds + 1:
            self.prune_and_rewind(optimizer)

    def finalize(self) -> None:
        if self.prune_at_start and self.total_steps == 0 and self.pruned_rounds == 0:
            self.prune_and_rewind()  # one round from θ_p: state 0's prune needs no training step
        super().finalize()
        if self.pruned_rounds < self.rounds:
            warnings.warn(f"LTH stopped after {self.pruned_rounds} of {self.rounds} rounds "
                          f"(sparsity {self.sparsity:.4f} < {self.target_sparsity:.4f})", stacklevel=2)

    def ticket(self, rounds: int, model: nn.Module) -> M.Masks:
        """Make ``model`` (a copy of this pruner's model) the LTH-T ticket after ``rounds`` prunes, θ_p ⊙ m_rounds,
        and return its masks: one IMP run to r rounds holds the tickets of every sparsity on its way (§4.2)."""
        if not self.prune_at_start:
            raise ValueError("intermediate tickets are LTH-T's (θ_p ⊙ m); rewinding to θ_k retrains each ticket")
        if rounds not in self.round_masks:
            raise ValueError(f"no ticket after {rounds} rounds (pruned {sorted(self.round_masks)})")
        model.load_state_dict(self.snapshot)
        masks = self.round_masks[rounds]
        params = S.set_weights(model, self.prunable)
        M.apply(params, {name: m.to(params[name].device) for name, m in masks.items()})
        return masks

    def state_dict(self) -> dict[str, Any]:
        snapshot = None if self.snapshot is None else {k: v.cpu() for k, v in self.snapshot.items()}
        return {**super().state_dict(), "snapshot": snapshot, "pruned_rounds": self.pruned_rounds,
                "round_masks": self.round_masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pruned_rounds = int(state["pruned_rounds"])
        self.snapshot = state["snapshot"]
        self.round_masks = {int(k): v for k, v in state.get("round_masks", {}).items()}
