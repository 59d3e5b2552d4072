"""Quick tries on real data (``--limit N``, as lm-eval's ``--limit``): the first N images of a split, class by class.

A split's own order is grouped by class on most layouts (folders are read class after class), so its first N
images would mostly be one class: a linear head trained on them says nothing. ``limited_indices`` instead takes
the split's images round-robin over the classes — the first image of every class in class order, then every
class's second, and so on — keeping each class's own order, so that:

* the choice is deterministic and needs no seed (every method, sparsity and seed of a sweep sees the same images);
* the classes are balanced (within one image) as far as each class has images;
* a smaller limit is a subset of a larger one (``--limit 100`` ⊂ ``--limit 200``).

The chosen images keep the split's own order. The same rule applies to the train and the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the split, not with this module
    from .data import Split


def limited_indices(labels: Sequence[int], limit: int) -> list[int]:
    """The indices (ascending) of the first ``limit`` images of a split with these ``labels``, taken class by class
    in turn (module docstring); every index when ``limit`` is 0 or at least the split's size."""
    if limit <= 0 or limit >= len(labels):
        return list(range(len(labels)))
    seen: dict[int, int] = {}
    rank = []  # (how many earlier images of its class, class, index): sorted, the round-robin order
    for index, label in enumerate(labels):
        label = int(label)
        rank.append((seen.get(label, 0), label, index))
        seen[label] = seen.get(label, 0) + 1
    rank.sort()
    return sorted(index for _, _, index in rank[:limit])


def limit_split(split: Split, limit: int) -> Split:
    """``split`` cut to ``limited_indices(split.labels, limit)`` (a multi-label split, whose images have no one
    class: its first ``limit`` images): unchanged when that is every image; otherwise a Split over a
    ``torch.utils.data.Subset`` that is no longer the paper's split (``paper_split`` False)."""
    multilabel = getattr(split, "targets", "single") == "multilabel"
    indices = list(range(min(limit, len(split)) if limit > 0 else len(split))) if multilabel \
        else limited_indices(split.labels, limit)
    if len(indices) == len(split):
        return split
    return take(split, indices, paper_split=False)


def take(split: Split, indices: list[int], **changes) -> Split:
    """The Split of ``split``'s images at ``indices`` (in that order), every per-image field cut alike: the labels,
    and a study's attributes, image ids and backdoor flags when it has them."""
    import numpy as np
    from torch.utils.data import Subset

    per_image = {}
    for name in ("attributes", "backdoored", "ids"):
        value = getattr(split, name, None)
        if value is not None:
            per_image[name] = [value[i] for i in indices] if isinstance(value, list) else value[np.asarray(indices)]
    labels = split.labels[np.asarray(indices, dtype=np.int64)] if isinstance(split.labels, np.ndarray) \
        else [split.labels[i] for i in indices]
    return replace(split, dataset=Subset(split.dataset, indices), labels=labels, **per_image, **changes)
