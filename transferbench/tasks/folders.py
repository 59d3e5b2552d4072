"""The pre-split ImageFolder packages of the paper's data instructions: ``train/<class>/*``, ``test/<class>/*``."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import TransferbenchError
from .data import ImageListDataset, Split


def list_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folders(split_dir: Path, classes: list[str] | None = None) -> Split:
    """Read one split folder. ``classes`` (from the train folder) fixes the label order for the test split.

    Class indices are the sorted folder names, as ``torchvision.datasets.ImageFolder`` assigns them.
    """
    found = list_classes(split_dir)
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise TransferbenchError(
            f"{split_dir} has class folders the train split lacks ({', '.join(unknown[:3])}); "
            "train/ and test/ must hold the same class folders"
        )
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for cls in found:
        for path in sorted((split_dir / cls).iterdir()):
            if path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith("."):
                samples.append((path, index[cls]))
    return Split(
        dataset=ImageListDataset(samples),
        labels=[label for _, label in samples],
        classes=list(classes),
        layout="folders",
        root=split_dir.parent,
    )
