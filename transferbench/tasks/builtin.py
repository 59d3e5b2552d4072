"""The offline mini-tasks: data generated or shipped with a dependency, no data root needed."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .. import synthetic
from .data import MultiLabelTargets, Split

FACES_SPLITS = {"train": (2000, 31), "validation": (500, 32), "test": (1000, 33)}  # images, generator seed


class ArrayDataset(Dataset):
    """uint8 images [N, H, W, 3] with labels; ``Transformed`` turns each into a PIL image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


@cache
def _arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if name == "digits":
        images, labels = synthetic.make_digits()
        order = np.random.default_rng(0).permutation(len(labels))
        test = order[: len(order) // 6]  # a fixed 1,498 / 299 split
        chosen = np.setdiff1d(order, test) if split == "train" else np.sort(test)
        return images[chosen], labels[chosen], [str(d) for d in range(10)]
    if name == "textures":
        images, labels = synthetic.make_textures(1600 if split == "train" else 800,
                                                 seed=11 if split == "train" else 12)
        return images, labels, list(synthetic.TEXTURES)
    if name == "faces":
        count, seed = FACES_SPLITS[split]
        images, attributes = synthetic.make_faces(count, seed=seed)
        return images, attributes, list(synthetic.FACE_ATTRIBUTES)
    raise KeyError(f"no built-in task data named {name!r}")


def load_builtin(name: str, split: str) -> Split:
    images, labels, classes = _arrays(name, split)
    root = Path(f"<builtin:{name}>")
    if labels.ndim == 1:
        return Split(dataset=ArrayDataset(images, labels), labels=labels.tolist(), classes=classes,
                     layout="builtin", root=root)
    # a multi-label mini-task (faces): every attribute an output; a variant narrows it (tasks.variants)
    targets = labels.astype(np.int64)
    return Split(dataset=MultiLabelTargets(ArrayDataset(images, np.arange(len(images))), targets),
                 labels=targets, classes=classes, layout="builtin", root=root, targets="multilabel",
                 attributes=labels.astype(np.int8), attribute_names=list(classes),
                 ids=[f"{name}-{split}-{i:05d}" for i in range(len(images))])
