"""Where full fine-tuning gets its batches, built so the device never waits on the data.

- Training batches come from one DataLoader whose workers persist for the whole run: the epoch's order is drawn in
  the main process (``EpochBatches``) and each sample carries its epoch seed to the worker (``SeededSamples``), so
  nothing a worker holds has to change between epochs and no worker is respawned. Workers crop and flip to uint8;
  each batch is normalised as one tensor on the device.
- The test split, whose transform is deterministic, is decoded once per run into uint8 pixels (``DecodedImages``: in
  memory up to ``IN_MEMORY_BYTES``, else a file in the run's work directory) and every evaluation reads those; the
  float conversion and normalisation run on the device.

Both give exactly the numbers of the DataLoaders they replace (tests/test_loaders.py), so run keys stay as they are.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..progress import progress
from ..seeding import SeededSamples
from ..tasks.data import Transformed
from ..transforms import TransformConfig, normalize_pixels, pixel_transform
from .workers import leave_signals_to_main

log = logging.getLogger("transferbench")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

# Decoded test pixels above this size go to a file in the work directory instead of memory (Food-101's 25,250 test
# images at 224 px are 3.8 GB of uint8).
IN_MEMORY_BYTES = 2 * 2**30
PIXELS_FILE, LABELS_FILE = "test_pixels.npy", "test_labels.npy"


class EpochLoaders(Protocol):
    """Where ``finetune_full`` gets its batches: an epoch's train batches from (epoch, epoch seed), test batches in
    the split's order. ``TorchLoaders`` is the default; ``fastdata.ffcv_loader.FFCVLoaders`` the FFCV one."""

    def train(self, epoch: int, epoch_seed: int) -> Batches: ...

    def test(self) -> Batches: ...


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """An epoch's batches of (index, epoch seed), in the order ``DataLoader(shuffle=True, generator=g)`` with ``g``
    seeded by the epoch seed draws them (records made before persistent workers keep their numbers). The sampler
    stays in the main process, so setting ``epoch_seed`` between epochs reaches persistent workers."""

    def __init__(self, num_samples: int, batch_size: int) -> None:
        self.num_samples, self.batch_size, self.epoch_seed = num_samples, batch_size, 0

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.epoch_seed)
        # A DataLoader draws its workers' base seed from its generator before the sampler's permutation.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order()
        for start in range(0, self.num_samples, self.batch_size):
            yield [(index, self.epoch_seed) for index in order[start:start + self.batch_size]]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)


class DecodedImages:
    """A split's deterministic pixels, decoded once: uint8 [N, 3, H, W] and int64 labels; batches are normalised
    (``transforms.normalize_pixels``) on the device they are read to."""

    def __init__(self, pixels: np.ndarray, labels: torch.Tensor, cfg: TransformConfig) -> None:
        self.pixels, self.labels, self.cfg = pixels, labels, cfg

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            part = self.pixels[start:start + batch_size]
            # a memory-mapped file is read-only: its batch is copied out (read from the page cache); memory is not
            part = torch.from_numpy(np.array(part) if isinstance(part, np.memmap) else part)
            pixels = part.to(device, non_blocking=True)
            yield normalize_pixels(pixels, self.cfg), self.labels[start:start + batch_size]


def decode_images(dataset: Dataset, cfg: TransformConfig, batch_size: int, num_workers: int,
                  work_dir: Path, in_memory_bytes: int | None = None) -> DecodedImages:
    """Decode ``dataset`` (a split's raw images) through ``cfg``'s deterministic resize and crop, once.

    Larger than ``in_memory_bytes`` (default ``IN_MEMORY_BYTES``): written to ``work_dir`` as a memory-mapped .npy
    (renamed into place when complete), which a resumed run reuses instead of decoding again.
    """
    limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    shape = (len(dataset), 3, cfg.image_size, cfg.image_size)  # type: ignore[arg-type]
    on_disk = math.prod(shape) > limit
    pixels_path, labels_path = work_dir / PIXELS_FILE, work_dir / LABELS_FILE
    if on_disk and pixels_path.exists() and labels_path.exists():
        pixels = np.load(pixels_path, mmap_mode="r")
        if pixels.shape == shape:
            log.info("full: reusing the decoded test images in %s", pixels_path)
            return DecodedImages(pixels, torch.from_numpy(np.load(labels_path)), cfg)
    if on_disk:
        work_dir.mkdir(parents=True, exist_ok=True)
        partial = pixels_path.with_suffix(".partial.npy")
        pixels = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    else:
        pixels = np.empty(shape, dtype=np.uint8)
    labels = _decode_into(pixels, Transformed(dataset, pixel_transform(cfg)), batch_size, num_workers)
    if on_disk:
        pixels.flush()
        np.save(labels_path, labels.numpy())
        os.replace(partial, pixels_path)  # complete, so a resumed run may reuse it
        pixels = np.load(pixels_path, mmap_mode="r")
    log.info("full: decoded %d test images once (%s, %.0f MB of uint8)", shape[0],
             pixels_path if on_disk else "in memory", math.prod(shape) / 1e6)
    return DecodedImages(pixels, labels, cfg)


def _decode_into(pixels: np.ndarray, dataset: Dataset, batch_size: int, num_workers: int) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=leave_signals_to_main)
    labels, start = [], 0
    for images, targets in progress(loader, desc="decoding test images", unit="batch"):
        pixels[start:start + len(images)] = images.numpy()
        labels.append(targets)
        start += len(images)
    return torch.cat(labels).long()


class TorchLoaders:
    """torch DataLoaders: training batches from persistent workers (augmentation seeded per sample), test batches
    from ``test_set`` through a persistent DataLoader, or from its decoded pixels when it is ``DecodedImages``.

    With ``normalize``, ``train_set`` gives uint8 pixels (``transforms.pixel_transform``) and each batch is
    normalised on ``device`` as one tensor (``transforms.normalize_pixels``): the same floats, without the per-image
    float conversion that dominated CPU loading, and a quarter of the bytes to a GPU.
    """

    def __init__(self, train_set: Dataset, test_set: Dataset | DecodedImages, batch_size: int,
                 eval_batch_size: int, num_workers: int, device: torch.device,
                 normalize: TransformConfig | None = None) -> None:
        self.sampler = EpochBatches(len(train_set), batch_size)  # type: ignore[arg-type]
        pin = device.type == "cuda"
        # The loader's own generator: its per-epoch base-seed draw must not consume the global RNG that seeds the
        # step (the old per-epoch DataLoaders drew from their seeded generators too).
        self.train_loader = DataLoader(SeededSamples(train_set), batch_sampler=self.sampler, num_workers=num_workers,
                                       persistent_workers=num_workers > 0, pin_memory=pin,
                                       worker_init_fn=leave_signals_to_main, generator=torch.Generator())
        self.test_set, self.eval_batch_size, self.device, self.normalize = test_set, eval_batch_size, device, normalize
        if not isinstance(test_set, DecodedImages):
            self.test_loader = DataLoader(test_set, batch_size=eval_batch_size, shuffle=False,
                                          num_workers=num_workers, persistent_workers=num_workers > 0,
                                          pin_memory=pin, worker_init_fn=leave_signals_to_main)

    def train(self, epoch: int, epoch_seed: int) -> Batches:
        self.sampler.epoch_seed = epoch_seed
        if self.normalize is None:
            return self.train_loader
        return _Reiterable(lambda: normalized_batches(self.train_loader, self.normalize, self.device),
                           len(self.train_loader))

    def test(self) -> Batches:
        if isinstance(self.test_set, DecodedImages):
            return _Reiterable(lambda: self.test_set.batches(self.eval_batch_size, self.device),
                               math.ceil(len(self.test_set) / self.eval_batch_size))
        return self.test_loader


def as_pixels(dataset: Dataset) -> tuple[Dataset, TransformConfig | None]:
    """``dataset`` giving uint8 pixels and the config whose ``normalize_pixels`` restores its floats, when it is a
    split under a protocol transform; else ``(dataset, None)``."""
    cfg = getattr(getattr(dataset, "transform", None), "cfg", None)
    if not isinstance(dataset, Transformed) or cfg is None:
        return dataset, None
    return Transformed(dataset.dataset, pixel_transform(cfg)), cfg


def normalized_batches(loader: Iterable, cfg: TransformConfig, device: torch.device) -> Iterator:
    """(images, targets) of ``loader`` with the uint8 images moved to ``device`` and normalised there."""
    for images, targets in loader:
        yield normalize_pixels(images.to(device, non_blocking=True), cfg), targets


class _Reiterable:
    """Each ``iter()`` a fresh pass of ``length`` batches, like a DataLoader (its length sizes the progress bar)."""

    def __init__(self, make: Callable[[], Iterator], length: int) -> None:
        self.make, self.length = make, length

    def __iter__(self) -> Iterator:
        return self.make()

    def __len__(self) -> int:
        return self.length


def runner_loaders(train: Dataset, test: Dataset, train_cfg: TransformConfig, test_cfg: TransformConfig,
                   batch_size: int, eval_batch_size: int, num_workers: int, device: torch.device,
                   work_dir: Path) -> TorchLoaders:
    """The loaders of a run over a task's raw splits: augmented training images from persistent workers, the test
    split decoded once."""
    decoded = decode_images(test, test_cfg, eval_batch_size, num_workers, work_dir)
    return TorchLoaders(Transformed(train, pixel_transform(train_cfg)), decoded, batch_size, eval_batch_size,
                        num_workers, device, normalize=train_cfg)
