"""Seeds that make a run's numbers independent of how it is executed (loader workers, ranks, resumption).

A sample's random augmentation is drawn from a seed of (epoch seed, index), not from a worker's RNG stream: DataLoader
workers seed their RNG from the worker id, so with per-worker streams the crops and flips would depend on the
worker count (cores per node), and a resumed or data-parallel run would draw different ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

_MOD = 2**63 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run seeded ``seed``."""
    return (seed * 1_000_003 + epoch) % _MOD


def seeded_item(dataset: Any, index: int, seed: int) -> Any:
    """``dataset[index]`` with the torch RNG seeded from (``seed``, ``index``); the caller's RNG stream is left as
    it was."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone: torch.manual_seed also queues a lazy CUDA seed on CUDA builds, which formats the
        # Python stack on every call (measured: half of a small full fine-tuning run).
        torch.default_generator.manual_seed((seed * 1_000_003 + index) % _MOD)
        return dataset[index]


class SeededSamples(Dataset):
    """Indexed by (index, seed): the sample with its augmentation drawn from that seed. A batch sampler that yields
    (index, epoch seed) pairs lives in the main process, so loader workers can persist across epochs."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        return seeded_item(self.dataset, index, seed)
