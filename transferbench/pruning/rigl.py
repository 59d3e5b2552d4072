"""RigL: sparse training from scratch with magnitude drop / gradient grow (pruning_methods.md §3).

The per-layer sparsities come from the Erdős–Rényi–Kernel distribution (or uniform), the initial masks are random
at those sparsities, and every ``ΔT`` steps until ``T_end`` each layer drops its ``k = floor(f(t)·n_active)``
smallest-|w| active weights and grows the ``k`` inactive ones with the largest dense-gradient magnitude, with the
cosine-decayed drop fraction ``f(t) = α/2·(1 + cos(πt/T_end))``. Grown weights (and their momentum) start at 0.

Order of operations (§3.2 allows either): like the usual PyTorch ports, the optimizer step of an update iteration is
applied and the masks are updated after it, using the gradient captured in ``after_backward`` before it was
masked. The TF reference skips the SGD step on update iterations instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from . import masks as M
from .base import Pruner


def erk_densities(shapes: Mapping[str, tuple[int, ...]], sparsity: float, erk_power_scale: float = 1.0,
                  dense_layers: tuple[str, ...] = ()) -> dict[str, float]:
    """Erdős–Rényi–Kernel densities: ``density_l = ε·((Σ shape_l)/(Π shape_l))^power`` (§3.1).

    ε makes the kept-weight count equal a uniform-``sparsity`` model's, ``Σ (n_l - floor(S·n_l))``. A layer whose
    density would exceed 1 is made dense and ε is solved again over the rest, its ``floor(S·n_l)`` extra weights
    taken from their budget (every layer sharing the largest raw ratio at once, as the reference loop).
    ``dense_layers`` are kept dense *outside* the budget, like RigL's ``custom_sparsity_map`` (e.g. the first
    layer at 99%), so the other layers alone average ``sparsity``.
    """
    unknown = set(dense_layers) - set(shapes)
    if unknown:
        raise KeyError(f"dense_layers not among the shapes: {sorted(unknown)}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items() if name not in dense_layers}
    raw = {name: (sum(shapes[name]) / n) ** erk_power_scale for name, n in sizes.items()}
    capped: set[str] = set()
    while True:
        free = [name for name in sizes if name not in capped]
        if not free:  # only reachable at sparsity 0, where every layer is dense anyway
            eps = 0.0
            break
        rhs = sum(sizes[n] - math.floor(sparsity * sizes[n]) for n in free)
        rhs -= sum(math.floor(sparsity * sizes[n]) for n in capped)
        eps = rhs / sum(raw[n] * sizes[n] for n in free)
        top = max(raw[n] for n in free)
        if eps * top <= 1.0:
            break
        capped |= {n for n in free if raw[n] == top}
    return {name: 1.0 if name in dense_layers or name in capped else eps * raw[name] for name in shapes}


def uniform_densities(shapes: Mapping[str, tuple[int, ...]], sparsity: float,
                      dense_layers: tuple[str, ...] = ()) -> dict[str, float]:
    """Every layer at ``sparsity`` except ``dense_layers`` (RigL "Uniform" keeps the first layer dense, §3.1)."""
    return {name: 1.0 if name in dense_layers else 1.0 - sparsity for name in shapes}


def cosine_drop_fraction(step: int, drop_fraction: float, t_end: int) -> float:
    """``f(t) = α/2·(1 + cos(πt/T_end))``: α at t = 0, 0 at T_end (§3.2)."""
    return drop_fraction / 2.0 * (1.0 + math.cos(math.pi * min(step, t_end) / t_end))


class RigLPruner(Pruner):
    """RigL as training-loop hooks (pruning_methods.md §3; loop protocol in ``base``).

    Masks are drawn at construction (exactly ``floor(s_l·n_l)`` zeros per layer, ``seed`` for the draw) and
    updated at every ``t % update_every == 0`` with ``t <= t_end`` (``t = 0`` included, as the TF code), never
    after. ``t_end`` defaults to ``0.75·total_steps`` (§3.4). ``distribution`` is ``"erk"`` (first and last layer
    included, §0.1) or ``"uniform"``; ``dense_layers`` defaults to none for ERK and to the first prunable layer for
    uniform (§3.1). Defaults of ``update_every`` and ``drop_fraction`` are the ImageNet values (§3.3: ΔT = 100,
    α = 0.3, T_end = 25k of 32k steps); CPU scale (§3.4, §9): ΔT = 20, α = 0.3, T_end = 0.75·S.

    Construction applies the initial random masks to the weights: to resume, build the pruner, then load the
    model's and the pruner's state (``load_state_dict``), so the random draw cannot zero saved weights.
    """

    method = "rigl"

    def __init__(self, model: nn.Module, target_sparsity: float, total_steps: int, update_every: int = 100,
                 drop_fraction: float = 0.3, t_end: int | None = None, distribution: str = "erk",
                 erk_power_scale: float = 1.0, dense_layers: tuple[str, ...] | None = None, seed: int = 0,
                 include_head: bool = True, exclude: tuple[str, ...] = ()):
        super().__init__(model, target_sparsity, total_steps, include_head=include_head, exclude=exclude)
        if update_every < 1 or not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"need update_every >= 1 and drop_fraction in [0, 1], got {update_every}, "
                             f"{drop_fraction}")
        self.update_every, self.drop_fraction = int(update_every), float(drop_fraction)
        self.t_end = int(0.75 * self.total_steps) if t_end is None else int(t_end)
        if self.t_end < 1:
            raise ValueError(f"t_end must be at least 1, got {self.t_end}")
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        if distribution == "erk":
            densities = erk_densities(shapes, self.target_sparsity, erk_power_scale, dense_layers or ())
        elif distribution == "uniform":
            first = tuple(list(shapes)[:1])
            densities = uniform_densities(shapes, self.target_sparsity, first if dense_layers is None else dense_layers)
        else:
            raise ValueError(f"distribution must be 'erk' or 'uniform', got {distribution!r}")
        self.layer_sparsity = {name: max(0.0, 1.0 - d) for name, d in densities.items()}
        generator = torch.Generator().manual_seed(seed)
        # random scores + the exact top-k give a uniformly random mask with exactly floor(s_l·n_l) zeros (§3.2)
        scores = {name: torch.rand(shape, generator=generator) for name, shape in shapes.items()}
        self.set_masks(M.layerwise_masks(scores, self.layer_sparsity))
        self._grads: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []  # one entry per mask update: step, drop fraction, k per layer

    def is_update_step(self, step: int) -> bool:
        return step % self.update_every == 0 and step <= self.t_end

    def after_backward(self, step: int) -> None:
        if self.is_update_step(step):
            # the grow criterion is the *dense* gradient, so it must be read before the masking below (§3.2)
            self._grads = {name: p.grad.detach().abs().clone() for name, p in self.params.items()
                           if p.grad is not None}
        super().after_backward(step)

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().after_step(step, optimizer)  # momentum and weight decay revive pruned weights: zero them first
        if self.is_update_step(step):
            if self._grads is None or set(self._grads) != set(self.params):
                raise RuntimeError(f"RigL update at step {step} needs after_backward({step}) after loss.backward()")
            self.update_masks(step, self._grads, optimizer)
            self._grads = None

    @torch.no_grad()
    def update_masks(self, step: int, grad_magnitude: Mapping[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer | None = None) -> None:
        """One drop/grow update (§3.2) from ``|dense gradient|`` per layer; keeps every layer's count."""
        fraction = cosine_drop_fraction(step, self.drop_fraction, self.t_end)
        new_masks, ks = {}, {}
        for name, p in self.params.items():
            mask = self.masks[name]
            n_active = int(mask.sum())
            k = math.floor(fraction * n_active)
            # drop: keep the n_active - k largest |w| among the active weights
            keep = M.topk_mask(p.detach().abs().masked_fill(~mask, -math.inf), n_active - k)
            # grow: the k largest |grad| among the rest (just-dropped ones included; they keep their value)
            grow = M.topk_mask(grad_magnitude[name].masked_fill(keep, -math.inf), k)
            new_masks[name], ks[name] = keep | grow, k
            born = grow & ~mask
            p[born] = 0.0
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            if state.get("momentum_buffer") is not None:
                state["momentum_buffer"][born] = 0.0  # new connections start without momentum (rigl_acc_scale=0)
        self.set_masks(new_masks)
        self.history.append({"step": step, "drop_fraction": fraction, "k": ks})
