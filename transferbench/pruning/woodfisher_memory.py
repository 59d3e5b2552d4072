"""Peak memory of one WoodFisher pruning step, from shapes only (docs/paper_scale.md, "WoodFisher memory").

Build the model under ``torch.device("meta")`` (no weight is allocated) and pass the recipe's woodfisher knobs::

    with torch.device("meta"):
        model = torchvision.models.resnet50()
    peak = woodfisher_peak_memory(model, recipe["methods"]["woodfisher"], recipe["image_size"])
    peak.device, peak.host   # bytes

``algorithm="streamed"`` is ``WoodFisherPruner`` as it is, with its chunk sizes from the same
``blocks_per_chunk``; ``"exact"`` is the pruner before streaming (issue 12): every gradient kept on the device
in ``fisher_dtype`` and stacked into a second copy, then every layer's c×c inverses kept until the update.

What is counted: the model's parameters and buffers, the masks, one autograd pass (the tensors autograd saves
for backward in an eval-mode forward of one mini-batch or micro-batch, measured on the meta device and counted
once per storage, plus an estimate of twice the largest of them for the activation gradients alive during
backward, plus the weight gradients), and every tensor of the size of a layer or larger that the pruning step
allocates, phase by phase. Not counted: the optimizer's state, the training batch, allocator fragmentation and
library workspaces (cuBLAS/cuSOLVER), for which a budget leaves room.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from . import masks as M
from .woodfisher import DEFAULT_CHUNK_BYTES, LayerBlocks, blocks_per_chunk, chunk_block_bytes, fisher_blocks

Algorithm = Literal["streamed", "exact"]


@dataclass(frozen=True)
class PeakMemory:
    """Bytes at the peak of one pruning step: ``device`` (the largest of ``phases``, reached in ``phase``) and
    ``host``; ``parts`` names the terms the phases are sums of."""

    device: int
    host: int
    phase: str
    phases: dict[str, int]
    parts: dict[str, int]


def autograd_pass_bytes(model: nn.Module, batch: int, image_size: int) -> tuple[int, int]:
    """(total, largest) bytes of the tensors autograd saves for backward in one eval-mode forward of ``batch``
    images and a cross-entropy loss, run on the meta device; parameters excluded (they are the model's)."""
    if any(p.device.type != "meta" for p in model.parameters()):
        raise ValueError("build the model under torch.device('meta'): its memory is computed from shapes only")
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # one entry per storage: a ReLU's output saved by the ReLU and by the next conv is one tensor in memory
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved.setdefault(storage._cdata, storage.nbytes())
        return t

    was_training = model.training
    model.eval()  # as the pruner: BN in eval mode saves what a frozen-statistics backward needs
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(torch.empty(batch, 3, image_size, image_size, device="meta"))
            torch.nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device="meta"))
    finally:
        model.train(was_training)
    return sum(saved.values()), max(saved.values(), default=0)


def _dtype(value: torch.dtype | str | None, default: torch.dtype) -> torch.dtype:
    """A recipe's dtype name (``float32``) or a dtype; ``default`` when unset."""
    if value is None:
        return default
    return value if isinstance(value, torch.dtype) else getattr(torch, value)


def woodfisher_peak_memory(model: nn.Module, knobs: Mapping[str, Any], image_size: int,
                           algorithm: Algorithm = "streamed") -> PeakMemory:
    """Peak memory of one WoodFisher pruning step of ``model`` (on the meta device) under a recipe's woodfisher
    ``knobs`` (``num_grads``, ``grad_batch_size``, ``block_size``, and optionally ``fisher_dtype``, ``grad_dtype``,
    ``offload_grads``, ``chunk_bytes``, ``grad_microbatch``, with the pruner's defaults, except that the model is
    taken to be on a GPU: gradients offloaded unless ``offload_grads: false``). Global scope (the reference's)."""
    n, fisher = int(knobs["num_grads"]), _dtype(knobs.get("fisher_dtype"), torch.float64)
    grad = _dtype(knobs.get("grad_dtype"), fisher)
    params = M.prunable_parameters(model)
    layout = fisher_blocks({name: p.shape for name, p in params.items()}, int(knobs["block_size"]))
    d = sum(layer.numel for layer in layout)
    batch = int(knobs["grad_batch_size"])
    piece = int(knobs.get("grad_microbatch") or batch) if algorithm == "streamed" else batch
    saved, largest = autograd_pass_bytes(model, min(piece, batch), image_size)
    weight_grads = sum(p.numel() * p.element_size() for p in params.values())
    parts = {
        "model": sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())),
        "masks": d,
        "activations": saved,
        "activation_grads": 2 * largest,
        "weight_grads": weight_grads * (2 if piece < batch else 1),  # the running sum of the pieces, and a piece
    }
    if algorithm == "exact":
        return _exact_peak(parts, layout, n, fisher)
    offloaded = bool(knobs.get("offload_grads", True))
    chunk_bytes = int(knobs.get("chunk_bytes", DEFAULT_CHUNK_BYTES))
    return _streamed_peak(parts, layout, n, fisher, grad, offloaded, chunk_bytes)


def _streamed_peak(parts: dict[str, int], layout: list[LayerBlocks], n: int, fisher: torch.dtype,
                   grad: torch.dtype, offloaded: bool, chunk_bytes: int) -> PeakMemory:
    f, d = fisher.itemsize, parts["masks"]
    largest_layer = max(layer.padded for layer in layout)
    parts |= {
        "gradients": n * sum(layer.padded for layer in layout) * grad.itemsize,  # the [B, N, c] buffers
        "inverse_diagonals": sum(layer.padded for layer in layout) * f,
        "saliencies": d * f,
        # one layer's weights in blocks with w², 2·diag and ρ (scores), or u, δw and the pruned blocks (update)
        "layer_temporaries": 4 * largest_layer * f + largest_layer,
        "chunk": max(blocks_per_chunk(layer, n, fisher, grad, offloaded, chunk_bytes)
                     * chunk_block_bytes(layer.size, n, fisher, grad, offloaded) for layer in layout),
        "selection": d * (4 + 4 + 8 + 1),  # global_masks: float32 copy of all scores, sorted values, int64 order, kept
    }
    resident = parts["model"] + parts["masks"] + (0 if offloaded else parts["gradients"])
    phases = {
        "gradients": resident + parts["activations"] + parts["activation_grads"] + parts["weight_grads"],
        "scores": resident + parts["inverse_diagonals"] + parts["saliencies"] + parts["layer_temporaries"]
        + parts["chunk"],
        "selection": resident + parts["inverse_diagonals"] + parts["saliencies"] + parts["selection"],
        "update": resident + parts["masks"] + parts["inverse_diagonals"] + parts["layer_temporaries"] + parts["chunk"],
    }
    return _peak(phases, parts, host=parts["gradients"] if offloaded else 0)


def _exact_peak(parts: dict[str, int], layout: list[LayerBlocks], n: int, fisher: torch.dtype) -> PeakMemory:
    """The pruner before streaming: rows of N gradients on the device, ``torch.stack`` into a second copy, then per
    layer the padded gradients, A (B×N×N) and ``(I − GᵀA⁻¹G)/λ`` (two B×c×c tensors alive while it is formed), every
    layer's inverse kept for the update."""
    f = fisher.itemsize
    inverses = [layer.blocks * layer.size ** 2 * f for layer in layout]
    parts |= {
        "gradients": n * sum(layer.numel for layer in layout) * f,
        "inverses": sum(inverses),
        "largest_inverse": max(inverses),
    }
    resident = parts["model"] + parts["masks"]
    building = max(sum(inverses[:i]) + n * layer.padded * f + layer.blocks * n * n * f + 2 * inverses[i]
                   for i, layer in enumerate(layout))
    phases = {
        "gradients": resident + parts["activations"] + parts["activation_grads"] + parts["weight_grads"]
        + parts["gradients"],
        "stack": resident + 2 * parts["gradients"],
        "inverses": resident + parts["gradients"] + building,
        "update": resident + parts["gradients"] + parts["inverses"],
    }
    return _peak(phases, parts, host=0)


def _peak(phases: dict[str, int], parts: dict[str, int], host: int) -> PeakMemory:
    phase = max(phases, key=phases.__getitem__)
    return PeakMemory(device=phases[phase], host=host, phase=phase, phases=phases, parts=parts)

