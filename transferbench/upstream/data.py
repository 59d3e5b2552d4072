"""The upstream datasets (procedural shapes offline, ImageNet as an ImageFolder) and how the loop reads them.

Every loader reads with worker processes, pinned memory on GPUs and persistent workers for the training batches
(``LoopOptions.workers``). The training order is a function of (seed, epoch) alone and every sample's augmentation
of (epoch seed, index), so a run gives the same numbers whatever its worker count, however many ranks share the
global batch (``ShardedBatches``) and wherever it was resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import synthetic
from ..errors import TransferbenchError
from ..finetune.workers import leave_signals_to_main
from ..seeding import epoch_seed, seeded_item
from ..tasks import IMAGENET_NORMALIZATION, Transformed
from ..tasks.builtin import ArrayDataset
from ..transforms import TransformConfig, build_transform
from .distributed import World

# How the training order is drawn; recorded with every checkpoint, so a change to it is never silent.
DATA_ORDER = "v2: per-epoch permutation seeded by (seed, epoch), global batches split across ranks, " \
             "augmentation seeded by (epoch seed, index)"


def upstream_datasets(recipe: dict, data_root: Path | None) -> tuple[Dataset, Dataset]:
    size = int(recipe["image_size"])
    if recipe["dataset"] == "shapes":
        train = ArrayDataset(*synthetic.make_shapes(int(recipe["train_size"]), size=size, seed=0))
        test = ArrayDataset(*synthetic.make_shapes(int(recipe["test_size"]), size=size, seed=1))
        cfg = TransformConfig(image_size=size, resize_size=size, mean=(0.2, 0.2, 0.2), std=(0.3, 0.3, 0.3))
        train_cfg = cfg
    elif recipe["dataset"] == "imagenet":
        from torchvision.datasets import ImageFolder

        if data_root is None or not (Path(data_root) / "train").is_dir():
            raise TransferbenchError(
                "--dataset imagenet needs --data-root DIR with DIR/train/<wnid>/ and DIR/val/<wnid>/"
            )
        cfg = TransformConfig(image_size=size, mean=IMAGENET_NORMALIZATION.mean, std=IMAGENET_NORMALIZATION.std)
        train_cfg = TransformConfig(**{**cfg.to_dict(), "augment": True})
        train, test = ImageFolder(Path(data_root) / "train"), ImageFolder(Path(data_root) / "val")
    else:
        raise TransferbenchError(f"unknown upstream dataset '{recipe['dataset']}' (--dataset); use shapes or imagenet")
    return Transformed(train, build_transform(train_cfg)), Transformed(test, build_transform(cfg))


class SeededSamples(Dataset):
    """Indexed by (index, seed): the sample with its augmentation drawn from that seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        return seeded_item(self.dataset, index, seed)


class ShardedBatches(Sampler[list[tuple[int, int]]]):
    """Epoch ``e``'s global batches: a permutation seeded by (seed, e) cut into batches of the global batch size
    (the last partial batch dropped); rank r of w takes positions [r·B/w, (r+1)·B/w) of each. So w processes with
    B/w samples each see exactly the samples one process with B sees, in the same steps."""

    def __init__(self, num_samples: int, global_batch: int, world: World, seed: int) -> None:
        if global_batch % world.size:
            raise TransferbenchError(f"the global batch {global_batch} does not split evenly over {world.size} "
                                     "processes; use a batch size divisible by the number of GPUs")
        if num_samples < global_batch:
            raise TransferbenchError(f"the upstream training set has {num_samples} images, fewer than one batch "
                                     f"of {global_batch}")
        self.num_samples, self.global_batch, self.world, self.seed = num_samples, global_batch, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seed = epoch_seed(self.seed, self.epoch)
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed)).tolist()
        per_rank = self.global_batch // self.world.size
        for b in range(len(self)):
            start = b * self.global_batch + self.world.rank * per_rank
            yield [(i, seed) for i in order[start:start + per_rank]]


def train_loader(train_set: Dataset, global_batch: int, world: World, seed: int, workers: int,
                 device: torch.device) -> DataLoader:
    """This rank's training batches; call ``loader.batch_sampler.set_epoch(e)`` before each epoch."""
    return DataLoader(SeededSamples(train_set), batch_sampler=ShardedBatches(len(train_set), global_batch, world, seed),
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=leave_signals_to_main)


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
