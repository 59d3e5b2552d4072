"""The upstream datasets (procedural shapes offline, ImageNet as an ImageFolder, a multi-label task such as CelebA:
``upstream.attributes``) and how the loop reads them.

Every loader reads with worker processes, pinned memory on GPUs and persistent workers for the training batches
(``LoopOptions.workers``). The training order is a function of (seed, epoch) alone and every sample's augmentation
of (epoch seed, index), so a run gives the same numbers whatever its worker count, however many ranks share the
global batch (``ShardedBatches``) and wherever it was resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import synthetic
from ..errors import TransferbenchError
from ..finetune.loaders import as_pixels, normalized_batches
from ..finetune.workers import leave_signals_to_main
from ..seeding import SeededSamples, epoch_seed
from ..tasks import IMAGENET_NORMALIZATION, Split, Transformed
from ..tasks.builtin import ArrayDataset
from ..transforms import TransformConfig, build_transform
from .distributed import World

# How the training order is drawn; recorded with every checkpoint, so a change to it is never silent.
DATA_ORDER = "v2: per-epoch permutation seeded by (seed, epoch), global batches split across ranks, " \
             "augmentation seeded by (epoch seed, index)"


def _eval_transform(recipe: dict) -> TransformConfig:
    """The recipe's evaluation transform: ImageNet's normalisation unless the recipe names the model's own
    (``normalization: {mean, std}``, set for a timm model's pretrained config when it is pruned one-shot)."""
    size = int(recipe["image_size"])
    norm = recipe.get("normalization") or {}
    return TransformConfig(image_size=size, mean=tuple(norm.get("mean", IMAGENET_NORMALIZATION.mean)),
                           std=tuple(norm.get("std", IMAGENET_NORMALIZATION.std)))


def train_transform(recipe: dict) -> TransformConfig:
    return TransformConfig(**{**_eval_transform(recipe).to_dict(), "augment": True})


@dataclass(frozen=True)
class UpstreamData:
    """The sets an upstream run reads. ``outputs``: the head's width (classes, or attributes for a multi-label
    task); ``validation``: the official validation split where the data has one (the checkpoint is chosen on it,
    ``upstream.selection``), else None (the last epoch's model is the checkpoint); ``multilabel``: targets are 0/1
    rows [K] (binary cross-entropy, mean attribute accuracy) rather than class indices."""

    train: Dataset
    test: Dataset
    outputs: int
    validation: Dataset | None = None
    multilabel: bool = False


SHAPES_CLASSES, IMAGENET_CLASSES = 16, 1000


def shapes_data(recipe: dict, data_root: Path | None) -> UpstreamData:
    """The offline procedural shapes (the mini-suite's upstream set), at the recipe's size and counts."""
    size = int(recipe["image_size"])
    train = ArrayDataset(*synthetic.make_shapes(int(recipe["train_size"]), size=size, seed=0))
    test = ArrayDataset(*synthetic.make_shapes(int(recipe["test_size"]), size=size, seed=1))
    cfg = TransformConfig(image_size=size, resize_size=size, mean=(0.2, 0.2, 0.2), std=(0.3, 0.3, 0.3))
    return UpstreamData(Transformed(train, build_transform(cfg)), Transformed(test, build_transform(cfg)),
                        SHAPES_CLASSES)


def imagenet_data(recipe: dict, data_root: Path | None) -> UpstreamData:
    """ImageNet in its folder layout under ``data_root`` (train/ and val/, the val folder as the test set)."""
    from torchvision.datasets import ImageFolder

    if data_root is None or not (Path(data_root) / "train").is_dir():
        raise TransferbenchError(
            "--dataset imagenet needs --data-root DIR with DIR/train/<wnid>/ and DIR/val/<wnid>/"
        )
    from ..tasks.data import read_rgb_image  # pil_loader's pixels; a bad file is one line naming it

    train, test = (ImageFolder(Path(data_root) / part, loader=read_rgb_image) for part in ("train", "val"))
    return UpstreamData(Transformed(train, build_transform(train_transform(recipe))),
                        Transformed(test, build_transform(_eval_transform(recipe))), IMAGENET_CLASSES)


def rank_order(num_samples: int, global_batch: int, world: World, seed: int, epoch: int) -> list[int]:
    """This rank's samples of epoch ``epoch``, in step order: a permutation seeded by (seed, epoch) cut into global
    batches (the last partial one dropped), of which rank r of w takes positions [r·B/w, (r+1)·B/w). So w processes
    with B/w samples each see exactly the samples one process with B sees, in the same steps."""
    if global_batch % world.size:
        raise TransferbenchError(f"the global batch {global_batch} does not split evenly over {world.size} "
                                 "processes; use a batch size divisible by the number of GPUs")
    if num_samples < global_batch:
        raise TransferbenchError(f"the upstream training set has {num_samples} images, fewer than one batch "
                                 f"of {global_batch}")
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(num_samples, generator=generator).tolist()
    per_rank, first = global_batch // world.size, world.rank * (global_batch // world.size)
    return [i for b in range(0, num_samples // global_batch * global_batch, global_batch)
            for i in order[b + first:b + first + per_rank]]


class ShardedBatches(Sampler[list[tuple[int, int]]]):
    """``rank_order`` as batches of (index, epoch seed) for a DataLoader over ``SeededSamples``."""

    def __init__(self, num_samples: int, global_batch: int, world: World, seed: int) -> None:
        rank_order(num_samples, global_batch, world, seed, 0)  # the one-line errors before any work
        self.num_samples, self.global_batch, self.world, self.seed = num_samples, global_batch, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seed, per_rank = epoch_seed(self.seed, self.epoch), self.global_batch // self.world.size
        order = rank_order(self.num_samples, self.global_batch, self.world, self.seed, self.epoch)
        for start in range(0, len(order), per_rank):
            yield [(i, seed) for i in order[start:start + per_rank]]


class TrainBatches(Protocol):
    """What the upstream loop reads: this rank's batches of an epoch (``set_epoch`` first); ``len`` = steps."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TorchTrainBatches:
    """A DataLoader over ``SeededSamples`` with ``ShardedBatches``: worker processes (persistent), pinned memory.
    Workers crop and flip to uint8 and each batch is normalised as one tensor on the device (the same floats as
    the per-image transform, without its per-image float work)."""

    def __init__(self, train_set: Dataset, global_batch: int, world: World, seed: int, workers: int,
                 device: torch.device) -> None:
        self.sampler = ShardedBatches(len(train_set), global_batch, world, seed)
        train_set, self.normalize = as_pixels(train_set)
        self.device = device
        self.loader = DataLoader(SeededSamples(train_set), batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 worker_init_fn=leave_signals_to_main)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.normalize is None:
            return iter(self.loader)
        return normalized_batches(self.loader, self.normalize, self.device)


class FFCVTrainBatches:
    """ImageNet's training batches from the ``.beton`` of ``data convert --task imagenet`` (``--loader ffcv``): the
    same samples in the same steps as ``TorchTrainBatches`` (``rank_order``), decoded and augmented by FFCV
    (random-resized crop + flip). FFCV draws its crops from numba's unseeded RNG, so an FFCV run is not
    bit-reproducible (a resumed run differs like another augmentation draw would)."""

    def __init__(self, data_root: Path | None, split: Split, cfg: TransformConfig, global_batch: int, world: World,
                 seed: int, workers: int, device: torch.device) -> None:
        from ..fastdata.ffcv_loader import FFCVBatches, find_beton

        path, self.meta = find_beton("imagenet", split, "train", data_root)
        rank_order(len(split), global_batch, world, seed, 0)  # the one-line errors before any work
        # on a GPU each batch leaves FFCV's reused buffers by a side-stream copy to the device
        self.batches = FFCVBatches(path, cfg, global_batch // world.size, max(workers, 1), drop_last=True,
                                   device=device)
        self.num_samples, self.global_batch, self.world, self.seed = len(split), global_batch, world, seed

    def set_epoch(self, epoch: int) -> None:
        self.batches.planned(rank_order(self.num_samples, self.global_batch, self.world, self.seed, epoch))

    def __len__(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)


def train_batches(rec: dict, train_set: Dataset, data_root: Path | None, world: World, seed: int, workers: int,
                  device: torch.device, loader: str = "torchvision") -> TrainBatches:
    """The training batches of the run: torchvision's decoding in loader workers, or FFCV's (ImageNet only)."""
    if loader == "torchvision":
        return TorchTrainBatches(train_set, int(rec["batch_size"]), world, seed, workers, device)
    if rec["dataset"] != "imagenet":
        raise TransferbenchError(f"--loader ffcv reads ImageNet's .beton files; the {rec['dataset']} set has none "
                                 "(use --loader torchvision)")
    from ..fastdata.convert import imagenet_splits

    return FFCVTrainBatches(data_root, imagenet_splits(data_root)["train"], train_transform(rec),
                            int(rec["batch_size"]), world, seed, workers, device)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", worker_init_fn=leave_signals_to_main)


class FisherBatches:
    """WoodFisher's N mini-batches per pruning step, freshly drawn each time (``--full-subsample``, §2.3).

    The draw comes from ``generator`` (part of the run's resume state); with ``(rank, world)`` only that rank's
    share ``n ≡ rank (mod world)`` is loaded, and the pruner gathers the gradients of all shares.
    """

    def __init__(self, dataset: Dataset, seed: int, workers: int, device: torch.device) -> None:
        self.dataset, self.workers, self.device = SeededSamples(dataset), workers, device
        self.generator = torch.Generator().manual_seed(seed + 7)

    def source(self, num_grads: int, batch_size: int) -> Callable[..., Iterator]:
        def batches(rank: int = 0, world: int = 1) -> Iterator:
            order = torch.randperm(len(self.dataset), generator=self.generator)[:num_grads * batch_size].tolist()
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            chunks = [[(i, seed) for i in order[n * batch_size:(n + 1) * batch_size]] for n in range(num_grads)]
            loader = DataLoader(self.dataset, batch_sampler=chunks[rank::world], num_workers=self.workers,
                                pin_memory=self.device.type == "cuda", worker_init_fn=leave_signals_to_main)
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

        return batches
