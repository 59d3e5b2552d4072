"""Readers for the official on-disk layout of each task, as the official archives unpack.

Each reader is ``reader(root: Path, split: "train"|"test", verify_md5: bool) -> Split`` and returns the
paper's split (transfer_protocol.md §1, P10). ``root`` is the folder that contains the card's
``layouts.official.marker``. torchvision.datasets classes are used where they exist; correctness never
depends on md5 sums of the official archive files (structure and counts are checked instead), and
``verify_md5=True`` additionally runs torchvision's md5 checks where torchvision has them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .data import Split

Reader = Callable[[Path, str, bool], Split]

READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return wrap
