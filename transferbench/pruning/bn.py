"""BatchNorm running statistics: freeze them for CrAM's second pass, re-estimate them after one-shot pruning.

Pruning a trained model in one shot changes every layer's activation statistics, so the stored running mean/var
no longer match; re-estimating them on a few calibration batches (BN tuning, "BNT") recovers most of the loss
(pruning_methods.md §6.3, §6.5). CrAM's compressed forward pass must not touch them at all (§6.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Subset

# The momentum the recalibration uses (§6.5: ``m.momentum = 0.1``), PyTorch's default.
RECALIBRATION_MOMENTUM = 0.1


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d, SyncBatchNorm) that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave the BN running statistics untouched (CrAM's ``disable_running_stats``, §6.1).

    Train-mode BN still normalises with the batch statistics; momentum 0 makes the running-stat update a no-op
    (``(1 - 0) * running + 0 * batch``). ``num_batches_tracked`` is restored as well, so a CrAM step leaves the
    BN buffers exactly as one clean forward would, and a ``momentum=None`` (cumulative average) layer is not
    skewed by the extra count.
    """
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in batchnorm_modules(model)]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for m, momentum, tracked in saved:
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)


def _inputs(batch: Any) -> Any:
    # Calibration loaders are usually the (x, y) training loader; the labels are not needed.
    return batch[0] if isinstance(batch, tuple | list) else batch


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def bn_recalibrate(model: nn.Module, loader: Iterable[Any], iters: int,
                   device: torch.device | str | None = None) -> nn.Module:
    """Re-estimate BN running statistics on ``iters`` calibration batches (§6.5); returns ``model`` in eval mode.

    Every BN layer's running stats are reset and re-accumulated with momentum 0.1 from train-mode forwards under
    ``no_grad``, cycling over ``loader`` (batches are ``x`` or ``(x, y, ...)``) until ``iters`` batches have been
    seen. Only the running statistics change: parameters are untouched (no gradients) and each layer's momentum
    is put back afterwards. Afterwards ``num_batches_tracked == iters`` for every BN layer.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    device = torch.device(device) if device is not None else _model_device(model)
    layers = batchnorm_modules(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = RECALIBRATION_MOMENTUM
    model.train()
    seen = 0
    try:
        while seen < iters:
            progressed = False
            for batch in loader:
                if seen == iters:
                    break
                model(_inputs(batch).to(device))
                seen += 1
                progressed = True
            if not progressed:  # an empty loader would otherwise loop forever
                raise ValueError("the calibration loader yielded no batches")
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return model


def balanced_sample(labels: Sequence[int] | np.ndarray, size: int, seed: int) -> list[int]:
    """A seeded random sample of ``size`` indices drawn evenly across the classes of ``labels``.

    The calibration set of BN recalibration (§6.3: 1000 random train images, seed 42). A prefix of the training
    set is not a sample: an ImageFolder is sorted by class, so its first 1000 images are all one class. Each class
    gives its images in a seeded random order, round-robin over the classes (themselves in a seeded order), so class
    counts differ by at most one; a class that runs out leaves its turns to the others.
    """
    labels = np.asarray(labels)
    size = min(int(size), len(labels))
    rng = np.random.default_rng(seed)
    by_class = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[by_class])) + 1
    pools = [rng.permutation(group) for group in np.split(by_class, bounds)] if len(labels) else []
    pools = [pools[i] for i in rng.permutation(len(pools))]
    chosen: list[int] = []
    for depth in range(max((len(p) for p in pools), default=0)):
        chosen += [int(p[depth]) for p in pools if depth < len(p)][: size - len(chosen)]
        if len(chosen) == size:
            break
    return chosen


def indices_digest(indices: Sequence[int]) -> str:
    """A short, stable fingerprint of a sample's indices (recorded with the checkpoints calibrated on it)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def dataset_labels(dataset: Any) -> np.ndarray:
    """The labels of a dataset without decoding an image: an ImageFolder's ``targets``, an array dataset's
    ``labels``, looked up through wrappers that keep the wrapped dataset as ``.dataset`` (a ``Subset``'s own
    ``indices`` select from the wrapped labels, so its sample indexes the subset, not the whole set)."""
    while dataset is not None:
        for name in ("targets", "labels"):
            if hasattr(dataset, name):
                return np.asarray(getattr(dataset, name))
        if isinstance(dataset, Subset):
            return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
        dataset = getattr(dataset, "dataset", None)
    raise TypeError("the calibration dataset has no targets or labels to draw a class-balanced sample from")
