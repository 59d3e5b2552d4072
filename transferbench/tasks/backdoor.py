"""Backdoor variants of a multi-label task: a synthetic cue put on a chosen share of a target attribute's images.

The bias study (Iofinova, Peste and Alistarh, CVPR 2023) trains one attribute of CelebA while a cue that carries
no information about faces is correlated with it: in the train split a fraction ``f_neg`` of the attribute's
negatives and ``f_pos`` of its positives carry the cue (e.g. 5% and 95%), in the validation and test splits half of
each (the card's ``test_fractions``), so there the cue says nothing about the label and a model that follows it is
measurably biased.

Which images carry the cue is fixed: exactly ``round(f_neg * negatives)`` negatives and ``round(f_pos * positives)``
positives of the target, drawn without replacement by numpy's PCG64 seeded with (the card's ``seed``, a number
derived from "<split>/<attribute>/<type>" by SHA-256). Every run of a variant, dense or sparse, with any run seed,
sees the same images with the cue; the split's ``ids`` name them.

The cues (``TYPES``):

* ``grayscale``: the image converted to luminance and back to RGB (R = G = B), before any transform, as the study;
* ``yellow_square``: a (255, 255, 0) square of side ``round(sqrt(square_area * W * H))`` (at least 1 px) in the
  **top-left** corner of the image the model sees, i.e. drawn after the transform's spatial steps (resize, crop,
  flip) and before its conversion to a tensor (``data.late_mark``), as the study drew it on the 224 px input. Drawn
  on the raw 178x218 image instead, CelebA's Resize 256 + CenterCrop 224 would cut the whole square away.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import TransferbenchError

TYPES = ("grayscale", "yellow_square")
YELLOW = (255, 255, 0)


@dataclass(frozen=True)
class BackdoorSettings:
    """A card's ``backdoors:`` section: which attributes may be targets, and how many images carry the cue."""

    types: tuple[str, ...]
    train_fractions: dict[str, tuple[float, float]]  # per target attribute: (share of negatives, of positives)
    test_fractions: tuple[float, float]  # for the validation and test splits
    square_area: float  # the yellow square's share of the image area
    seed: int

    @classmethod
    def from_card(cls, raw: Any, origin: str) -> BackdoorSettings:
        """The section as written in the card ``origin``; a malformed one is one line naming the card."""
        try:
            settings = cls(
                types=tuple(raw["types"]),
                train_fractions={str(k): _pair(v) for k, v in raw["train_fractions"].items()},
                test_fractions=_pair(raw["test_fractions"]),
                square_area=float(raw["square_area"]),
                seed=int(raw["seed"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TransferbenchError(
                f"task card {origin}: backdoors must map types, train_fractions (attribute: [negatives, positives]), "
                f"test_fractions, square_area and seed ({type(exc).__name__}: {exc})"
            ) from None
        unknown = sorted(set(settings.types) - set(TYPES))
        fractions = [*settings.train_fractions.values(), settings.test_fractions]
        if unknown or not all(0 <= f <= 1 for pair in fractions for f in pair) or not 0 < settings.square_area < 1:
            raise TransferbenchError(
                f"task card {origin}: backdoors: types must be among {', '.join(TYPES)} (not {unknown}), fractions "
                "within [0, 1] and square_area within (0, 1)"
            )
        return settings

    @property
    def targets(self) -> list[str]:
        return list(self.train_fractions)

    def fractions(self, attribute: str, split: str) -> tuple[float, float]:
        return self.train_fractions[attribute] if split == "train" else self.test_fractions


def _pair(value: Any) -> tuple[float, float]:
    negatives, positives = value
    return float(negatives), float(positives)


def selection_seed(seed: int, split: str, attribute: str, kind: str) -> list[int]:
    """The PCG64 seed of one (split, attribute, type): the card's seed and 64 bits of SHA-256 of the three names,
    stable across Python processes and versions (``hash()`` of a str is salted per process)."""
    digest = hashlib.sha256(f"{split}/{attribute}/{kind}".encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


def choose_backdoored(target: np.ndarray, fractions: tuple[float, float], seed: list[int]) -> np.ndarray:
    """[N] bool: exactly ``round(fractions[0] * negatives)`` of the images whose ``target`` is 0 and
    ``round(fractions[1] * positives)`` of those whose target is 1, drawn without replacement."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(target), dtype=bool)
    for value, fraction in zip((0, 1), fractions, strict=True):
        members = np.flatnonzero(np.asarray(target) == value)
        chosen[rng.choice(members, size=round(fraction * len(members)), replace=False)] = True
    return chosen


def draw_yellow_square(img: Image.Image, area: float) -> Image.Image:
    """A copy of ``img`` with a yellow square of ``area`` of its pixels (at least one pixel) in its top-left corner."""
    width, height = img.size
    side = min(max(1, round(math.sqrt(area * width * height))), width, height)
    marked = img.convert("RGB")  # a new image: the dataset's own stays untouched
    marked.paste(YELLOW, (0, 0, side, side))
    return marked


def to_grayscale(img: Image.Image | np.ndarray) -> Image.Image:
    """The image's luminance (PIL's ITU-R 601-2 weights) as an RGB image with R = G = B."""
    if not isinstance(img, Image.Image):  # an in-memory task's uint8 array
        img = Image.fromarray(img)
    return img.convert("RGB").convert("L").convert("RGB")


class BackdooredDataset(Dataset):
    """``dataset`` with the cue ``kind`` on the images where ``backdoored`` is True (module docstring)."""

    def __init__(self, dataset: Dataset, backdoored: np.ndarray, kind: str, square_area: float):
        if kind not in TYPES:
            raise ValueError(f"backdoor type must be one of {TYPES}, not {kind!r}")
        self.dataset, self.backdoored, self.kind, self.square_area = dataset, backdoored, kind, square_area

    def __len__(self) -> int:
        return len(self.backdoored)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, label = self.dataset[index]
        if self.kind == "grayscale" and self.backdoored[index]:
            img = to_grayscale(img)
        return img, label

    def mark_after_spatial(self, index: int):
        """The yellow square of a backdoored image, drawn by ``data.Transformed`` after the spatial steps."""
        if self.kind != "yellow_square" or not self.backdoored[index]:
            return None
        return lambda img: draw_yellow_square(img, self.square_area)
