"""The in-memory description of one split: a dataset of (PIL image, label) plus its labels and classes.

A split has one of two kinds of targets (``Split.targets``): ``"single"``, one class index per image (the paper's
12 tasks), or ``"multilabel"``, a row of K binary outputs per image (CelebA's attributes, the ``faces`` mini-task),
trained with one sigmoid per output.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import TransferbenchError


@dataclass
class Split:
    """One split of one task as read from disk.

    ``dataset[i]`` returns ``(PIL.Image, label)`` without any transform; ``labels[i]`` is the same
    label, available without decoding images (class counts, split sizes, per-class metrics).

    With ``targets == "multilabel"``, ``labels`` is an int64 array [N, K] of 0/1 (one column per output,
    ``classes`` the K output names) and ``dataset[i]`` returns ``(PIL.Image, float32 tensor [K])``.
    The fields after ``targets`` are per image and only set by tasks whose images carry annotations beyond their
    labels (CelebA); a subset must cut them alike (``tasks.limit.take``).
    """

    dataset: Dataset
    labels: list[int] | np.ndarray
    classes: list[str]
    layout: str
    root: Path
    paper_split: bool = True  # False when this layout cannot reproduce the paper's split (birds, official)
    label_source: Path | None = None  # the file the labels were read from, named when a label is out of range
    subset: str = ""  # the indices digest of a low-data subset (tasks.subset); "" for the whole split
    targets: str = "single"  # "single" (a class index per image) or "multilabel" (a 0/1 row per image)
    attributes: np.ndarray | None = None  # [N, A] int8 0/1: every annotated attribute (bias metrics need them all)
    attribute_names: list[str] | None = None  # the A attribute names, in the annotation file's order
    backdoored: np.ndarray | None = None  # [N] bool: the images that carry a backdoor variant's synthetic cue
    ids: list[str] | None = None  # image file names: dense and sparse runs' predictions pair by id

    def __len__(self) -> int:
        return len(self.labels)

    def check_labels(self) -> None:
        """Every label is a class index (0..classes-1), or for a multi-label split a 0/1 row of one value per
        output: a label file from another release or a corrupt one would otherwise pass loading and crash training
        (or silently drop samples from per-class metrics)."""
        if self.targets == "multilabel":
            self._check_multilabel()
            return
        count = len(self.classes)
        bad = next(((i, y) for i, y in enumerate(self.labels) if not 0 <= y < count), None)
        if bad is not None:
            raise TransferbenchError(
                f"{self.label_source or self.root}: label {bad[1]} of image {bad[0]} is outside the {count} "
                f"classes (0..{count - 1}); the labels are corrupt or belong to another release; re-extract the dataset"
            )

    def _check_multilabel(self) -> None:
        source, count = self.label_source or self.root, len(self.classes)
        labels = self.labels
        if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.shape[1] != count:
            shape = labels.shape if isinstance(labels, np.ndarray) else f"a {type(labels).__name__}"
            raise TransferbenchError(
                f"{source}: the labels are {shape}, not one row of {count} values per image (one per output: "
                f"{', '.join(self.classes[:3])}...); the annotation file is corrupt or belongs to another release; "
                "re-extract the dataset"
            )
        bad = np.argwhere((labels != 0) & (labels != 1))
        if len(bad):
            row, column = bad[0]
            raise TransferbenchError(
                f"{source}: value {labels[row, column]} of image {row} for {self.classes[column]} is not 0 or 1; "
                "the annotation file is corrupt or belongs to another release; re-extract the dataset"
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


class MultiLabelTargets(Dataset):
    """A multi-label split's dataset: the images of ``dataset`` (whose own labels are ignored) with the rows of
    ``labels`` ([N, K] of 0/1) as float32 tensors [K], the targets of a sigmoid cross-entropy."""

    def __init__(self, dataset: Dataset, labels: np.ndarray):
        if len(dataset) != len(labels):  # type: ignore[arg-type]
            raise ValueError(f"{len(dataset)} images but {len(labels)} label rows")  # type: ignore[arg-type]
        self.dataset = dataset
        self.labels = np.ascontiguousarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        img, _ = self.dataset[index]
        return img, torch.from_numpy(self.labels[index].copy())  # a copy: a batch must not alias the table


def image_list(dataset: Dataset) -> ImageListDataset | None:
    """The ``ImageListDataset`` under ``dataset``'s wrappers (each keeps what it wraps as ``.dataset``: Subset,
    MultiLabelTargets, a backdoor's), whose files ``check_data`` checks; None for in-memory data."""
    while dataset is not None:
        if isinstance(dataset, ImageListDataset):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


Mark = Callable[[Image.Image], Image.Image]


def late_mark(dataset: Dataset, index: int) -> Mark | None:
    """What a dataset draws on its image ``index`` after the transform's spatial steps, if anything.

    A synthetic cue in a corner (a backdoor's yellow square, ``tasks.backdoor``) must be where the model sees it:
    drawn on the raw image, a random or centre crop would cut part or all of it away. A dataset that needs this has a
    method ``mark_after_spatial(index)``; it is looked up through the wrappers that keep what they wrap as ``.dataset``
    (a ``Subset`` maps the index too), so a ``--limit`` or low-data subset keeps the marks of its images.
    """
    while dataset is not None:
        mark_for = getattr(dataset, "mark_after_spatial", None)
        if mark_for is not None:
            return mark_for(index)
        if isinstance(dataset, Subset):
            index = dataset.indices[index]
        dataset = getattr(dataset, "dataset", None)
    return None


def _spatial_and_rest(transform: Callable[[Image.Image], Any]) -> tuple[Callable, Callable]:
    """``transform`` (a torchvision Compose) cut where its images stop being PIL images: its spatial steps (resize,
    crop, flip: the random ones draw in the same order as the whole Compose does) and the conversion after them."""
    from torchvision import transforms as T

    if not isinstance(transform, T.Compose):
        raise TypeError(f"a mark drawn after the spatial steps needs a torchvision Compose, not {type(transform)}")
    steps = list(transform.transforms)
    cut = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor | T.PILToTensor)), len(steps))
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


class Transformed(Dataset):
    """Applies ``convert('RGB')`` (pitfall P13) and a transform to a Split's dataset; a mark the dataset draws after
    the spatial steps (``late_mark``) is drawn between those and the tensor conversion."""

    def __init__(self, dataset: Dataset, transform: Callable[[Image.Image], Any]):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        img, label = self.dataset[index]
        if not isinstance(img, Image.Image):  # CIFAR stores uint8 arrays
            img = Image.fromarray(img)
        img = img.convert("RGB")
        mark = late_mark(self.dataset, index)
        if mark is None:
            return self.transform(img), label
        spatial, rest = _spatial_and_rest(self.transform)
        return rest(mark(spatial(img))), label
