"""The in-memory description of one split: a dataset of (PIL image, label) plus its labels and classes."""

from __future__ import annotations

import struct
import warnings
import zlib
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
    label_source: Path | None = None  # the file the labels were read from, named when a label is out of range
    subset: str = ""  # the indices digest of a low-data subset (tasks.subset); "" for the whole split

    def __len__(self) -> int:
        return len(self.labels)

    def check_labels(self) -> None:
        """Every label is a class index (0..classes-1): a label file from another release or a corrupt one would
        otherwise pass loading and crash training (or silently drop samples from per-class metrics)."""
        count = len(self.classes)
        bad = next(((i, y) for i, y in enumerate(self.labels) if not 0 <= y < count), None)
        if bad is not None:
            raise TransferbenchError(
                f"{self.label_source or self.root}: label {bad[1]} of image {bad[0]} is outside the {count} "
                f"classes (0..{count - 1}); the labels are corrupt or belong to another release; re-extract the dataset"
            )


# What PIL raises on truncated, corrupt or non-image files, besides its decompression-bomb error.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)


def open_image(path: Path) -> Image.Image:
    """``Image.open`` (lazy: the header only) with PIL's decompression-bomb guard made an error at its first level.

    PIL raises DecompressionBombError above twice ``Image.MAX_IMAGE_PIXELS`` but only warns between once and twice;
    both are refused here, as one line naming the file, like any unreadable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TransferbenchError(
            f"image {path} is too large to decode, a possible decompression bomb ({exc}); remove or replace the file"
        ) from None
    except _DECODE_ERRORS as exc:
        raise TransferbenchError(f"cannot read image {path} ({exc}); re-extract the dataset") from None


def read_image(path: Path) -> Image.Image:
    """The decoded image at ``path`` (file closed), any failure a TransferbenchError naming the file."""
    with open_image(path) as img:
        try:
            img.load()
        except _DECODE_ERRORS as exc:
            raise TransferbenchError(f"cannot read image {path} ({exc}); re-extract the dataset") from None
        return img


def read_rgb_image(path: str | Path) -> Image.Image:
    """``read_image`` as RGB: a ``loader`` for torchvision's ImageFolder in place of its ``pil_loader``
    (same pixels; a bomb or unreadable file is one line naming it instead of a traceback)."""
    return read_image(Path(path)).convert("RGB")


class ImageListDataset(Dataset):
    """Images listed as (path, label) pairs; the common case for every file-based layout."""

    def __init__(self, samples: Sequence[tuple[Path, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return read_image(path), label

    def check_headers(self) -> None:
        """Every image opens (its header: no decoding) and has a size PIL accepts and at least 1x1 px."""
        for path, _ in self.samples:
            with open_image(path) as img:
                if min(img.size) < 1:
                    raise TransferbenchError(f"image {path} is {img.size[0]}x{img.size[1]} px; remove or replace it")


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
