"""The low-data regime (``--train-size N``, ``--train-per-class K``): a seeded, class-balanced subset of a task's
training split, as VTAB-1k draws 1000 training images per task (Zhai et al., 2019).

``subset_order`` puts the split's images in one seeded order: every class's images shuffled, then taken round-robin
over the classes (the class order shuffled too, so the classes that get one image more when N is not a multiple of
the class count are the seed's choice, not always the first ones). Then:

* ``--train-size N`` takes the first N of that order: the classes are balanced within one image as far as each
  class has images, and a smaller N of the same seed is a subset of a larger one;
* ``--train-per-class K`` takes each class's first K (all of a class that has fewer, which the record shows);
* the run's seed draws the subset, so the seeds of a low-data run differ in their images as well as in their
  training (the spread over seeds includes the choice of images, as in VTAB-1k's reports).

The subset's indices digest is part of the split (``Split.subset``): it keys the feature cache and is recorded.
The test split is never cut.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import TransferbenchError

if TYPE_CHECKING:  # torch loads with the split, not with this module
    from .data import Split

# Named low-data settings (``--train-size NAME``): VTAB-1k's 1000 training images per task, 800 to train on and 200
# held out to choose hyper-parameters (then ``--train-size 1000`` trains on all of them)
LOW_DATA_PRESETS = {"vtab1k": {"train_size": 1000, "validation_size": 200}}


def subset_order(labels: Sequence[int], seed: int) -> list[int]:
    """Every index of a split with these ``labels``, in the seeded class-balanced order of the module docstring."""
    rng = np.random.default_rng([seed, 0x10DA7A])  # its own stream: not the one the run's seed gives training
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    class_rank = dict(zip(classes.tolist(), rng.permutation(len(classes)).tolist(), strict=True))
    order = []  # (position within its class, the class's rank, index)
    for c in classes.tolist():
        members = rng.permutation(np.flatnonzero(labels == c))
        order.extend((position, class_rank[c], int(index)) for position, index in enumerate(members))
    order.sort()
    return [index for _, _, index in order]


def subset_indices(labels: Sequence[int], seed: int, size: int = 0, per_class: int = 0) -> list[int]:
    """The indices (ascending) of the low-data subset: the first ``size`` of ``subset_order``, or every class's
    first ``per_class``; every index when both are 0."""
    if size and per_class:
        raise TransferbenchError("--train-size and --train-per-class choose the same subset two ways: give one")
    if size > len(labels):
        raise TransferbenchError(f"--train-size {size} exceeds the training split's {len(labels)} images: choose "
                                 "at most that, or 0 for the whole split")
    if not size and not per_class:
        return list(range(len(labels)))
    order = subset_order(labels, seed)
    if size:
        return sorted(order[:size])
    taken: dict[int, int] = {}
    chosen = []
    for index in order:
        label = int(labels[index])
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(index)
    return sorted(chosen)


def subset_digest(indices: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def subset_split(split: Split, seed: int, size: int = 0, per_class: int = 0) -> Split:
    """``split`` cut to ``subset_indices``: unchanged when both are 0; otherwise a Split over a
    ``torch.utils.data.Subset`` that carries its indices' digest (``subset``) and is not the paper's split."""
    if not size and not per_class:
        return split
    indices = subset_indices(split.labels, seed, size, per_class)
    from torch.utils.data import Subset

    return replace(split, dataset=Subset(split.dataset, indices), labels=[split.labels[i] for i in indices],
                   paper_split=False, subset=subset_digest(indices))


def split_off_validation(split: Split, seed: int, size: int, validation: int) -> tuple[Split, Split]:
    """The ``size`` images of ``--train-size`` split in two: the first ``size - validation`` of the seeded order
    to train on (the very subset ``--train-size size - validation`` draws with this seed) and the last
    ``validation`` held out, both class-balanced as far as the classes allow."""
    if not 0 < validation < size:
        raise TransferbenchError(f"--validation-size {validation} must be above 0 and below --train-size {size}")
    if size > len(split):
        raise TransferbenchError(f"--train-size {size} exceeds the training split's {len(split)} images: choose "
                                 "at most that, or 0 for the whole split")
    order = subset_order(split.labels, seed)[:size]
    from torch.utils.data import Subset

    def cut(indices: list[int]) -> Split:
        indices = sorted(indices)
        return replace(split, dataset=Subset(split.dataset, indices), labels=[split.labels[i] for i in indices],
                       paper_split=False, subset=subset_digest(indices))

    return cut(order[:size - validation]), cut(order[size - validation:])


def subset_info(split: Split) -> dict:
    """What a record says of a low-data subset: its size, digest, and the smallest and largest class count."""
    counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=len(split.classes))
    return {"size": len(split), "indices_sha256": split.subset, "per_class_min": int(counts.min()),
            "per_class_max": int(counts.max())}
