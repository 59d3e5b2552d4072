"""The upstream sets by ``--dataset`` name: the offline shapes and ImageNet (``upstream.data``), or a multi-label task
(CelebA, faces and their variants: ``upstream.attributes``)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..errors import TransferbenchError
from .attributes import attribute_data, is_attribute_task
from .data import UpstreamData, imagenet_data, shapes_data

DATASET_READERS = {"shapes": shapes_data, "imagenet": imagenet_data}


def check_upstream_dataset(name: str) -> None:
    """A one-line error for a --dataset the upstream loop cannot read (before any work)."""
    if name not in DATASET_READERS and not is_attribute_task(name):
        raise TransferbenchError(f"unknown upstream dataset '{name}' (--dataset); use shapes, imagenet or a "
                                 "multi-label task: celeba (--data-root), faces, celeba-<attribute>")


def upstream_data(recipe: dict, data_root: Path | None) -> UpstreamData:
    """Every set of the recipe's ``dataset`` (``check_upstream_dataset`` names the ones there are)."""
    check_upstream_dataset(recipe["dataset"])
    if recipe["dataset"] in DATASET_READERS:
        return DATASET_READERS[recipe["dataset"]](recipe, data_root)
    return attribute_data(recipe, data_root)


def upstream_datasets(recipe: dict, data_root: Path | None) -> tuple[Dataset, Dataset]:
    """(train, test) of ``upstream_data``: the sets BN calibration and one-shot candidates read."""
    data = upstream_data(recipe, data_root)
    return data.train, data.test
