"""The in-memory description of one split: a dataset of (PIL image, label) plus its labels and classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..errors import TransferbenchError


@dataclass
class Split:
    """One split of one task as read from disk.

    ``dataset[i]`` returns ``(PIL.Image, label)`` without any transform; ``labels[i]`` is the same
    label, available without decoding images (class counts, split sizes, per-class metrics).
    """

    dataset: Dataset
    labels: list[int]
    classes: list[str]
    layout: str
    root: Path
    paper_split: bool = True  # False when this layout cannot reproduce the paper's split (birds, official)

    def __len__(self) -> int:
        return len(self.labels)


class ImageListDataset(Dataset):
    """Images listed as (path, label) pairs; the common case for every file-based layout."""

    def __init__(self, samples: Sequence[tuple[Path, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img.load()
                return img, label
        except (OSError, SyntaxError) as exc:  # PIL raises both for truncated or non-image files
            raise TransferbenchError(f"cannot read image {path} ({exc}); re-extract the dataset") from None


class Transformed(Dataset):
    """Applies ``convert('RGB')`` (pitfall P13) and a transform to a Split's dataset."""

    def __init__(self, dataset: Dataset, transform: Callable[[Image.Image], Any]):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        img, label = self.dataset[index]
        if not isinstance(img, Image.Image):  # CIFAR stores uint8 arrays
            img = Image.fromarray(img)
        return self.transform(img.convert("RGB")), label
