"""One-shot post-training pruning from a little calibration data: Wanda and SparseGPT (and magnitude, for
comparison), unstructured or N:M, on every Linear and Conv2d weight of a trained model.

The calibration pass (``calibrate``) runs the calibration batches through the model with forward pre-hooks on the
layers to prune and gathers what each pruner needs of a layer's input X (one column per input feature, one row per
token or per convolution patch):

- Wanda (Sun et al., 2023): the squared norm of every input feature over the calibration tokens, ``sum_t x_tj^2``;
  a weight's score is ``|W_ij| * ||X_j||_2``, compared within each output row (the paper's "per output"
  comparison group);
- SparseGPT (Frantar & Alistarh, 2023): ``H = X^T X`` (d x d). Each row of W is pruned column by column, left to
  right, with the optimal brain surgeon's update of the columns still to its right through the upper Cholesky
  factor of ``(H + lambda I)^-1``, ``lambda`` = 1% of H's mean diagonal; the updates are applied lazily per block of
  128 columns. The mask is chosen per block from ``w^2 / [H^-1]_jj^2`` (the OBS error of pruning w): one threshold
  over the whole block (``mask_scope="block"``, the paper's) or the same fraction in every row (``"row"``).

Layers are calibrated and pruned **sequentially**, in the order the data flows through them, so each layer sees the
inputs the already pruned layers before it produce (as both papers do within their transformer blocks); one pass
per layer. ``sequential=False`` takes every layer's statistics from one pass through the dense model.

Convolutions are pruned as the matrix ``[out, kh * kw * in]`` over their unfolded input patches (columns ordered
kernel position first, input channel last, so that N:M groups run along input channels as ``masks.nm_mask``'s do).
Under N:M, a layer whose input width is not a multiple of M (a stem convolution over 3 channels: 27) stays dense,
as no N:M kernel can run it. Grouped convolutions (depthwise) have no such matrix: they are pruned by magnitude
within the layer, at the same sparsity or pattern, and ``PrunedLayer.method`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import masks as M

Method = Literal["magnitude", "wanda", "sparsegpt"]
METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
DAMPENING = 0.01  # SparseGPT's lambda: this fraction of H's mean diagonal is added to its diagonal
BLOCK = 128  # SparseGPT's lazy-update block of columns


@dataclass(frozen=True)
class PrunedLayer:
    """What pruning did to one layer: its name, how (a grouped conv falls back to magnitude), the kept fraction,
    and the squared reconstruction error ``|(W - W') X^T|^2`` over the calibration inputs (NaN where not known)."""

    name: str
    method: str
    density: float
    error: float


@dataclass
class LayerStats:
    """One layer's calibration statistics: the Gram matrix of its input columns (SparseGPT), or only its diagonal,
    the squared norms (all Wanda needs: d numbers instead of d^2), and the number of tokens."""

    gram: torch.Tensor | None  # [d, d] float64, sum over calibration tokens of x x^T
    tokens: int = 0
    squares: torch.Tensor | None = None  # [d] float64, sum over calibration tokens of x_j^2

    @property
    def feature_norms(self) -> torch.Tensor:
        """``||X_j||_2`` of every input feature (Wanda's activation norm)."""
        squares = self.squares if self.squares is not None else self.gram.diagonal()
        return squares.clamp_min(0).sqrt()


def layer_inputs(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the matrix X the pruners see: ``[tokens, in_features]`` for a Linear (every leading
    dimension is tokens), ``[patches, kh * kw * in_channels]`` for a Conv2d."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    c, (kh, kw) = layer.in_channels, layer.kernel_size
    # [N, C*kh*kw, L] in (c, kh, kw) order -> [N*L, kh*kw*C]: kernel position first, channel last
    return patches.view(x.shape[0], c, kh * kw, -1).permute(0, 3, 2, 1).reshape(-1, kh * kw * c)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` with columns in ``layer_inputs``' order (a view of a copy for convs)."""
    w = layer.weight.detach()
    return w if w.dim() == 2 else w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def set_weight_matrix(layer: nn.Module, matrix: torch.Tensor) -> None:
    w = layer.weight
    with torch.no_grad():
        if w.dim() == 2:
            w.copy_(matrix)
        else:
            o, c, kh, kw = w.shape
            w.copy_(matrix.reshape(o, kh, kw, c).permute(0, 3, 1, 2))


def _matrix_layout(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


@torch.no_grad()
def collect_stats(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[torch.Tensor],
                  forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
                  gram: bool = True) -> dict[str, LayerStats]:
    """One pass of ``batches`` through ``model`` (``forward(model, batch)``, default ``model(batch)``) gathering
    each of ``layers``' input Gram matrix (``gram``; else only its diagonal), each batch's product in float32
    (as SparseGPT's code) summed in float64."""
    stats = {name: None for name in layers}
    handles = []

    def hook(name: str, layer: nn.Module):
        def gather(_module, args):
            x = layer_inputs(layer, args[0]).float()
            if stats[name] is None:
                d, kw = x.shape[1], {"dtype": torch.float64, "device": x.device}
                stats[name] = LayerStats(torch.zeros(d, d, **kw) if gram else None, 0,
                                         None if gram else torch.zeros(d, **kw))
            if gram:
                stats[name].gram += (x.T @ x).double()
            else:
                stats[name].squares += (x * x).sum(dim=0).double()
            stats[name].tokens += x.shape[0]
        return gather

    for name, layer in layers.items():
        if _matrix_layout(layer):
            handles.append(layer.register_forward_pre_hook(hook(name, layer)))
    try:
        for batch in batches:
            (forward or (lambda m, b: m(b)))(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: s for name, s in stats.items() if s is not None}


def wanda_scores(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` (weight as ``[out, in]``)."""
    return weight.abs().double() * stats.feature_norms[None, :]


def row_mask(scores: torch.Tensor, sparsity: float | None = None, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep the highest scores of every row: ``1 - sparsity`` of them, or ``n`` of every ``m`` consecutive ones."""
    if nm is not None:
        n, m = nm
        if scores.shape[1] % m:
            raise ValueError(f"{scores.shape[1]} input features cannot be split into groups of {m}")
        groups = scores.reshape(-1, m)
        keep = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True).reshape(scores.shape)
    keep = M.n_keep(scores.shape[1], sparsity)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)


def sparsegpt(weight: torch.Tensor, stats: LayerStats, sparsity: float | None = None,
              nm: tuple[int, int] | None = None, mask_scope: str = "block", block: int = BLOCK,
              dampening: float = DAMPENING, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight matrix ``[out, in]``: the pruned, updated weights and the kept mask (True = kept).
    ``mask`` fixes the mask instead of choosing it (tests compare the updates with the closed form)."""
    w = weight.detach().double().clone()
    cols = w.shape[1]
    h = stats.gram.clone()
    # An input that is always 0 on the calibration data (a padded border tap of a small image) gets H_jj = 1 so that
    # H stays invertible. SparseGPT's code also zeroes its weights; here they stay (unless the mask prunes them):
    # the downstream images may well reach them, and every zero weight is then one the mask says
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    h.diagonal().add_(dampening * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    kept = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, hinv1 = w[:, start:end].clone(), hinv[start:end, start:end]
        err1 = torch.zeros_like(w1)
        if mask is not None:
            keep1 = mask[:, start:end]
        elif nm is None:
            keep1 = _block_mask(w1 ** 2 / hinv1.diagonal()[None, :] ** 2, sparsity, mask_scope)
        else:
            keep1 = torch.ones_like(w1, dtype=torch.bool)
        for i in range(end - start):
            if nm is not None and mask is None and i % nm[1] == 0:  # each group of m columns, chosen on arrival
                scores = w1[:, i:i + nm[1]] ** 2 / hinv1.diagonal()[i:i + nm[1]][None, :] ** 2
                keep1[:, i:i + nm[1]] = row_mask(scores, nm=nm)
            column, d = w1[:, i], hinv1[i, i]
            pruned = torch.where(keep1[:, i], column, torch.zeros_like(column))
            error = (column - pruned) / d
            w1[:, i:] -= error[:, None] * hinv1[i, i:][None, :]  # the OBS update of the columns to the right
            w1[:, i] = pruned
            err1[:, i] = error
        w[:, start:end] = w1
        kept[:, start:end] = keep1
        w[:, end:] -= err1 @ hinv[start:end, end:]  # the block's updates, applied to every later column at once
    return w.to(weight.dtype), kept


def _block_mask(scores: torch.Tensor, sparsity: float, scope: str) -> torch.Tensor:
    if scope == "row":
        return row_mask(scores, sparsity)
    if scope != "block":
        raise ValueError(f"mask_scope must be block or row, not {scope!r}")
    return M.topk_mask(scores, M.n_keep(scores.numel(), sparsity))


def reconstruction_error(before: torch.Tensor, after: torch.Tensor, stats: LayerStats) -> float:
    """``|(W - W') X^T|_F^2 = tr(D H D^T)`` with ``D = W - W'``, from the Gram matrix alone (NaN in a layer's report
    when only Wanda's norms were gathered)."""
    delta = (before.double() - after.double())
    return float(((delta @ stats.gram) * delta).sum())


def prune_layer(layer: nn.Module, method: str, stats: LayerStats | None, sparsity: float | None = None,
                nm: tuple[int, int] | None = None, mask_scope: str = "block") -> tuple[torch.Tensor, str]:
    """Prune ``layer`` in place with ``method``; returns its kept mask (the weight's own shape) and the method
    used (magnitude for a grouped convolution)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if nm and _matrix_layout(layer) and weight_matrix(layer).shape[1] % nm[1]:
        width = weight_matrix(layer).shape[1]  # e.g. a stem conv over 3 channels: 27 inputs, no 2:4 kernel
        return torch.ones_like(layer.weight, dtype=torch.bool), f"dense ({width} inputs: no groups of {nm[1]})"
    if stats is None or not _matrix_layout(layer) or method == "magnitude":
        used = "magnitude"
        mask = M.nm_mask(layer.weight, *nm) if nm else M.topk_mask(layer.weight.abs(),
                                                                    M.n_keep(layer.weight.numel(), sparsity))
        if method != "magnitude" and not _matrix_layout(layer):
            used = f"magnitude (a grouped convolution: {method} needs a dense input matrix)"
        with torch.no_grad():
            layer.weight.mul_(mask)
        return mask, used
    matrix = weight_matrix(layer)
    if method == "wanda":
        keep = row_mask(wanda_scores(matrix, stats), sparsity, nm)
        new = matrix * keep
    else:
        new, keep = sparsegpt(matrix, stats, sparsity, nm, mask_scope)
    set_weight_matrix(layer, new)
    return (keep if keep.dim() == layer.weight.dim() else _as_weight_shape(layer, keep)), method


def _as_weight_shape(layer: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    o, c, kh, kw = layer.weight.shape
    return keep.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous()


def prune_one_shot(model: nn.Module, method: str, batches: list[torch.Tensor], *, sparsity: float | None = None,
                   nm: tuple[int, int] | None = None, layers: Mapping[str, nn.Module] | None = None,
                   sequential: bool = True, mask_scope: str = "block",
                   forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
                   ) -> tuple[M.Masks, list[PrunedLayer]]:
    """Prune ``model`` in place: every layer of ``layers`` (default: every Conv2d and Linear, in forward order)
    with ``method`` at ``sparsity`` or the ``nm`` pattern, from the calibration ``batches``. Returns the masks
    keyed by weight name (``<layer>.weight``) and a report per layer."""
    if (sparsity is None) == (nm is None):
        raise ValueError("give either a sparsity or an N:M pattern")
    layers = dict(layers) if layers is not None else forward_order(model, batches[0], forward)
    was_training = model.training
    model.eval()
    masks, report = {}, []
    try:
        pending = dict(layers)
        while pending:
            # sequential: one layer at a time, its inputs from the layers pruned before it; else all at once
            step = dict([next(iter(pending.items()))]) if sequential else pending
            stats = collect_stats(model, step, batches, forward, gram=method == "sparsegpt") \
                if method != "magnitude" else {}
            for name, layer in step.items():
                before = weight_matrix(layer).clone() if name in stats and stats[name].gram is not None else None
                mask, used = prune_layer(layer, method, stats.get(name), sparsity, nm, mask_scope)
                error = reconstruction_error(before, weight_matrix(layer), stats[name]) if before is not None \
                    else float("nan")
                masks[f"{name}.weight" if name else "weight"] = mask
                report.append(PrunedLayer(name, used, float(mask.float().mean()), error))
            pending = {n: m for n, m in pending.items() if n not in step}
    finally:
        model.train(was_training)
    return masks, report


@torch.no_grad()
def forward_order(model: nn.Module, batch: torch.Tensor,
                  forward: Callable[[nn.Module, torch.Tensor], object] | None = None) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` in the order one forward pass reaches them."""
    seen: dict[str, nn.Module] = {}
    names = {module: name for name, module in model.named_modules()}

    def note(module: nn.Module, _args) -> None:  # a pre-hook that returned a value would replace the input
        seen.setdefault(names[module], module)

    handles = [m.register_forward_pre_hook(note) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        (forward or (lambda m, b: m(b)))(model, batch[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return seen
