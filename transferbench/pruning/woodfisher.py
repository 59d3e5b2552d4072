"""WoodFisher: gradual OBS pruning with a block-diagonal empirical Fisher inverse (pruning_methods.md §2).

At each pruning step of a cubic schedule (§1.1, §2.3) the pruner

1. collects ``N`` mini-batch gradients of the loss with respect to the prunable weights (model in eval mode, so BN
   running statistics are untouched; gradients masked by the current mask, §2.1),
2. splits every layer's flattened weight into contiguous blocks of ``c`` entries and builds each block's inverse
   empirical Fisher ``F̂⁻¹ = (λI + (1/N) Σ g gᵀ)⁻¹`` by the Woodbury / Sherman-Morrison recursion — ``N`` rank-1
   updates of a ``c×c`` matrix, never a dense Fisher over the whole model,
3. scores every active weight by its OBS saliency ``ρ_q = w_q² / (2 [F̂⁻¹]_qq)`` and keeps the global (or
   per-layer) top ``n - floor(s·n)`` (pruned weights score ``-inf`` so the masks are nested),
4. moves the remaining weights of each block by the sum of the single-weight OBS updates of its newly pruned
   weights, ``δw = scale · F̂⁻¹ u`` with ``u_q = -w_q / [F̂⁻¹]_qq`` (``--woodburry-joint-sparsify``), then masks.

Memory is O(N·d) for the gradients and O(c·d) for the block inverses (d = prunable weights), as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from . import masks as M
from .gmp import GMPPruner
from .magnitude import Scope

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]

def woodbury_inverse(grads: torch.Tensor, damp: float) -> torch.Tensor:
    """``(λI + (1/N) GᵀG)⁻¹`` for ``grads`` ``[..., N, c]`` (§2.1); ``[..., c, c]``. Leading dimensions are blocks.

    Uses the Woodbury identity in closed form, ``(1/λ)·(I − Gᵀ (NλI_N + GGᵀ)⁻¹ G)``: the same matrix as the N
    Sherman-Morrison updates of the reference code, but computed with two batched matrix products and an N×N
    solve per block, which is compute-bound instead of N memory-bound rank-1 passes over every c×c block (the
    small recipe's whole pruning step went from 497 to 104 ms; benchmarks/bench_pruning.py). ``N = 0``: ``I/λ``.
    """
    if damp <= 0:
        raise ValueError(f"the dampening λ must be positive, got {damp}")
    *batch, n, c = grads.shape
    eye = torch.eye(c, dtype=grads.dtype, device=grads.device)
    if n == 0:
        return (eye / damp).expand(*batch, c, c).clone()
    gram = grads @ grads.transpose(-1, -2)  # [..., N, N]
    gram.diagonal(dim1=-2, dim2=-1).add_(n * damp)
    return (eye - grads.transpose(-1, -2) @ torch.linalg.solve(gram, grads)) / damp


def obs_saliency(w: torch.Tensor, finv_diag: torch.Tensor) -> torch.Tensor:
    """OBS loss increase of removing each weight alone, ``ρ_q = w_q² / (2 [F̂⁻¹]_qq)`` (§2.1).

    The reference code drops the ½ (it does not change the ranking); keeping it makes ρ the exact increase of the
    quadratic model, which the tests check.
    """
    return w.pow(2) / (2.0 * finv_diag)


def obs_update(w: torch.Tensor, finv: torch.Tensor, prune: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Weight change ``δw = scale · F̂⁻¹ u``, ``u_q = -w_q / [F̂⁻¹]_qq`` on the pruned set, 0 elsewhere (§2.1-2.2).

    ``w`` ``[..., c]``, ``finv`` ``[..., c, c]``, ``prune`` bool ``[..., c]``. For one pruned weight this is the OBS
    optimum ``-w_q F̂⁻¹e_q / [F̂⁻¹]_qq`` (it zeroes w_q exactly); for several it is the sum of the single-weight
    updates, as the reference does, so pruned coordinates are zeroed by the mask rather than by δw.
    ``scale = 0`` is OBD (no compensation).
    """
    diag = finv.diagonal(dim1=-2, dim2=-1)
    u = torch.where(prune, -w / diag, torch.zeros_like(w))
    return scale * (finv @ u.unsqueeze(-1)).squeeze(-1)


def _blocks(flat: torch.Tensor, c: int) -> torch.Tensor:
    """``[..., n]`` → ``[..., B, c]`` zero-padded. Zero padding is exact for the Fisher: a padded coordinate has
    zero gradients, so its row and column of F̂ are λ on the diagonal only and it decouples from the real ones."""
    n = flat.shape[-1]
    blocks = math.ceil(n / c)
    pad = flat.new_zeros((*flat.shape[:-1], blocks * c - n))  # new_zeros + cat also pads bool masks
    return torch.cat([flat, pad], dim=-1).unflatten(-1, (blocks, c))


class WoodFisherPruner(GMPPruner):
    """Gradual WoodFisher pruning as training-loop hooks (pruning_methods.md §2; loop protocol in ``base``).

    The schedule is GMP's (§1.1, §2.3): masks change in ``before_step`` at ``t0, t0 + prune_every, …`` and at
    ``t_end`` (always included, so the last step reaches ``target_sparsity`` exactly), each to the cubic-schedule
    sparsity from ``initial_sparsity``; only the statistic and the weight update differ. ``fisher_batches()`` is
    called once per pruning step and must yield at least ``num_grads`` ``(inputs, targets)`` mini-batches (a
    fresh random subset each time, as ``--full-subsample``); ``loss_fn(model(x), y)`` is their mean loss.
    ``num_grads = 0`` uses ``F̂ = λI``, which reduces to magnitude pruning (§2.5). ``scope`` is ``"global"`` (the
    reference, ``--woodburry-joint-sparsify``) or ``"layerwise"``; ``scale`` multiplies the OBS update (0 = OBD).
    Defaults are the ImageNet ResNet-50 values (§2.3: N = 400 gradients of 400 samples each, λ = 1e-5, c = 2000;
    that run prunes at epochs 1, 6, …, 36 from ``initial_sparsity = 0.05``). CPU scale (§2.4, §9): N = 32 of 16
    samples, c = 256, λ = 1e-4, on GMP's schedule (t0 = 0.2·S, t_end = 0.6·S, 8 updates). The mini-batch size of
    the N gradients is whatever ``fisher_batches`` yields.
    """

    method = "woodfisher"

    def __init__(self, model: nn.Module, target_sparsity: float, total_steps: int, t0: int, t_end: int,
                 prune_every: int, fisher_batches: Batches | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 num_grads: int = 400, block_size: int = 2000, damp: float = 1e-5, scope: Scope = "global",
                 initial_sparsity: float = 0.0, scale: float = 1.0, fisher_dtype: torch.dtype = torch.float64,
                 include_head: bool = True, exclude: tuple[str, ...] = ()):
        super().__init__(model, target_sparsity, total_steps, t0, t_end, prune_every,
                         initial_sparsity=initial_sparsity, scope=scope, include_head=include_head, exclude=exclude)
        if num_grads < 0 or block_size < 1 or damp <= 0:
            raise ValueError(f"need num_grads >= 0, block_size >= 1, damp > 0; got {num_grads}, {block_size}, {damp}")
        if num_grads > 0 and fisher_batches is None:
            raise ValueError("fisher_batches is required when num_grads > 0")
        self.fisher_batches, self.loss_fn = fisher_batches, loss_fn
        self.num_grads, self.block_size, self.damp = int(num_grads), int(block_size), float(damp)
        self.scale, self.fisher_dtype = float(scale), fisher_dtype

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        if step in self._prune_set:
            self.prune_to(self.sparsity_at(step))

    # -- one pruning step ----------------------------------------------------------------------------
    def _nothing_to_prune(self, sparsity: float) -> bool:
        if self.scope == "global":
            total = sum(m.numel() for m in self.masks.values())
            return M.n_keep(total, sparsity) >= sum(int(m.sum()) for m in self.masks.values())
        return all(M.n_keep(m.numel(), sparsity) >= int(m.sum()) for m in self.masks.values())

    def collect_gradients(self) -> dict[str, torch.Tensor]:
        """``name → [N, numel]`` masked mini-batch gradients of the prunable weights, in ``fisher_dtype`` (§2.1)."""
        names = list(self.params)
        rows: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        if self.num_grads > 0:
            assert self.fisher_batches is not None
            device = next(iter(self.params.values())).device
            was_training = self.model.training
            self.model.eval()  # the reference asserts eval mode: BN uses (and keeps) its running statistics
            try:
                for x, y in islice(self.fisher_batches(), self.num_grads):
                    loss = self.loss_fn(self.model(x.to(device)), y.to(device))
                    # autograd.grad leaves .grad alone, so a pruning step never leaks into the training step
                    grads = torch.autograd.grad(loss, [self.params[n] for n in names])
                    for name, g in zip(names, grads, strict=True):
                        rows[name].append((g * self.masks[name]).flatten().to(self.fisher_dtype))
            finally:
                self.model.train(was_training)
            got = len(rows[names[0]]) if names else self.num_grads
            if got < self.num_grads:
                raise ValueError(f"fisher_batches() yielded {got} mini-batches, WoodFisher needs {self.num_grads}")
        return {name: torch.stack(rows[name]) if rows[name] else
                self.params[name].new_zeros((0, self.params[name].numel()), dtype=self.fisher_dtype)
                for name in names}

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """One WoodFisher step to ``sparsity`` (usable alone as one-shot WoodFisher pruning, §2.2)."""
        if self._nothing_to_prune(sparsity):
            return
        with torch.enable_grad():
            grads = self.collect_gradients()
        finvs, weights, stats = {}, {}, {}
        for name, p in self.params.items():
            # a layer smaller than c is one block of its own size (§2.1), so no compute goes to padding
            c = min(self.block_size, p.numel())
            w = _blocks(p.detach().flatten().to(self.fisher_dtype), c)                # [B, c]
            finv = woodbury_inverse(_blocks(grads[name], c).transpose(0, 1), self.damp)   # [B, c, c]
            rho = obs_saliency(w, finv.diagonal(dim1=-2, dim2=-1)).flatten()[:p.numel()].view_as(p)
            # already-pruned weights can never come back: nested masks (§1.1, §2.5)
            stats[name] = rho.masked_fill(~self.masks[name], -math.inf)
            finvs[name], weights[name] = finv, w
        select = M.global_masks if self.scope == "global" else M.layerwise_masks
        new = select(stats, sparsity)
        for name, p in self.params.items():
            new[name] = new[name] & self.masks[name]
            pruned = _blocks((self.masks[name] & ~new[name]).flatten(), finvs[name].shape[-1])
            delta = obs_update(weights[name], finvs[name], pruned, self.scale)
            p.add_(delta.flatten()[:p.numel()].view_as(p).to(p.dtype))
        self.set_masks(new)
