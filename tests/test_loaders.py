"""Full fine-tuning's loaders (finetune/loaders.py): persistent workers and the test split decoded once give exactly
the batches of the per-epoch DataLoaders they replace (written out here as the reference), and decode once."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from transferbench.finetune import loaders
from transferbench.finetune.full import finetune_full
from transferbench.models import create_model
from transferbench.runspec import resolve_hparams
from transferbench.seeding import seeded_item
from transferbench.tasks.data import Transformed
from transferbench.transforms import TransformConfig, build_transform

CFG = TransformConfig(image_size=16, resize_size=18, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


class Pictures(Dataset):
    """Raw PIL images of varied sizes, as a task's split gives them; counts how often each is read (decoded)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.arrays = [rng.integers(0, 256, (int(rng.integers(18, 30)), int(rng.integers(18, 30)), 3), np.uint8)
                       for _ in range(n)]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int):
        self.reads += 1
        return Image.fromarray(self.arrays[index]), index % 3


class _OldSeededAugmentation(Dataset):
    """The loaders before persistent workers: the epoch seed set on the dataset, a DataLoader built per epoch."""

    def __init__(self, dataset, epoch_seed):
        self.dataset, self.epoch_seed = dataset, epoch_seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return seeded_item(self.dataset, index, self.epoch_seed)


def _old_epoch(dataset, batch_size, epoch_seed, workers=0):
    return list(DataLoader(_OldSeededAugmentation(dataset, epoch_seed), batch_size=batch_size, shuffle=True,
                           num_workers=workers, generator=torch.Generator().manual_seed(epoch_seed)))


@pytest.mark.parametrize("n,batch", [(1, 4), (37, 8), (64, 64), (100, 7)])
def test_epoch_batches_draw_the_order_of_a_shuffled_dataloader_with_the_epoch_seed(n, batch):
    sampler = loaders.EpochBatches(n, batch)
    for seed in (0, 1, 123456789):
        sampler.epoch_seed = seed
        reference = [b.tolist() for b in DataLoader(range(n), batch_size=batch, shuffle=True,
                                                     generator=torch.Generator().manual_seed(seed))]
        assert [[i for i, _ in b] for b in sampler] == reference
        assert all(s == seed for b in sampler for _, s in b)
        assert len(sampler) == len(reference)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_equal_the_per_epoch_dataloaders_with_persistent_workers(workers):
    train = Transformed(Pictures(23), build_transform(TransformConfig(**{**CFG.to_dict(), "augment": True})))
    torch_loaders = loaders.TorchLoaders(train, train, 5, 8, workers, torch.device("cpu"))
    for epoch, seed in enumerate((11, 12, 13)):
        got = list(torch_loaders.train(epoch, seed))
        old = _old_epoch(train, 5, seed)
        assert len(got) == len(old)
        for (x, y), (x_old, y_old) in zip(got, old, strict=True):
            assert torch.equal(x, x_old) and torch.equal(y, y_old)


class _Pids(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return os.getpid()


def test_training_workers_persist_across_epochs():
    torch_loaders = loaders.TorchLoaders(_Pids(), _Pids(), 4, 4, 2, torch.device("cpu"))
    pids = [set(torch.cat(list(torch_loaders.train(e, e))).tolist()) for e in range(3)]
    assert pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0]


@pytest.mark.parametrize("in_memory_bytes", [None, 0])  # 0: every split goes to disk
def test_decoded_test_images_give_the_transform_s_floats_bit_for_bit(tmp_path, in_memory_bytes):
    pictures = Pictures(11)
    decoded = loaders.decode_images(pictures, CFG, 4, 0, tmp_path, in_memory_bytes)
    assert (tmp_path / loaders.PIXELS_FILE).exists() == (in_memory_bytes == 0)
    reference = list(DataLoader(Transformed(pictures, build_transform(CFG)), batch_size=4))
    for _ in range(2):  # re-iterable, same batches every evaluation
        got = list(decoded.batches(4, torch.device("cpu")))
        assert len(got) == len(reference)
        for (x, y), (x_ref, y_ref) in zip(got, reference, strict=True):
            assert x.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_a_resumed_run_reuses_the_decoded_file_and_an_unfinished_one_is_not_reused(tmp_path):
    pictures = Pictures(6)
    loaders.decode_images(pictures, CFG, 4, 0, tmp_path, 0)
    reads = pictures.reads
    again = loaders.decode_images(pictures, CFG, 4, 0, tmp_path, 0)
    assert pictures.reads == reads and len(again) == 6  # nothing decoded again
    (tmp_path / loaders.PIXELS_FILE).unlink()
    (tmp_path / "test_pixels.partial.npy").write_bytes(b"half-written")  # a run killed while decoding
    loaders.decode_images(pictures, CFG, 4, 0, tmp_path, 0)
    assert pictures.reads == 2 * reads


def test_a_full_run_decodes_its_test_split_once_however_many_evaluations(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=3)
    masks = {}
    train, test = Pictures(12, seed=1), Pictures(9, seed=2)
    train_cfg = TransformConfig(**{**CFG.to_dict(), "augment": True})
    hp = resolve_hparams("full", 0.001, {"epochs": 3, "lr": 0.01, "batch_size": 4, "image_size": 16})
    torch_loaders = loaders.runner_loaders(train, test, train_cfg, CFG, 4, 4, 0, torch.device("cpu"), tmp_path)
    result = finetune_full(model, masks, None, None, 3, hp, 0, tmp_path, torch.device("cpu"), loaders=torch_loaders)
    assert len([p for p in result.curve if "top1" in p]) == 3  # three evaluations...
    assert test.reads == len(test)  # ...of images decoded once (the old loaders decoded 3 x 9)
    assert len(torch_loaders.test()) == 3  # 9 images in batches of 4: the progress bar's total
    assert train.reads == 3 * len(train)


def test_the_default_worker_count_follows_the_allocation_not_the_node(monkeypatch):
    from transferbench import context

    monkeypatch.setattr(context.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert context.allocated_cores() == 16
    assert context.default_workers() == 8 and context.default_workers(4) == 3 and context.default_workers(16) == 0
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # a job given 6 of the node's cores
    assert context.allocated_cores() == 6 and context.default_workers() == 5
    assert context.RunContext().num_workers == 5


@pytest.mark.parametrize("workers", [0, 1])
def test_runner_training_batches_normalised_as_one_tensor_equal_the_per_image_transform(tmp_path, workers):
    """uint8 crops from the workers, normalised per batch on the device: the floats of build_transform, image by
    image, with the same crops and flips."""
    pictures = Pictures(19, seed=3)
    train_cfg = TransformConfig(**{**CFG.to_dict(), "augment": True})
    runner = loaders.runner_loaders(pictures, Pictures(3), train_cfg, CFG, 6, 4, workers, torch.device("cpu"),
                                    tmp_path)
    for epoch, seed in enumerate((5, 6)):
        got = list(runner.train(epoch, seed))
        old = _old_epoch(Transformed(pictures, build_transform(train_cfg)), 6, seed)
        assert len(got) == len(old) == len(runner.train(epoch, seed)) == 4  # its length sizes the progress bar
        for (x, y), (x_old, y_old) in zip(got, old, strict=True):
            assert x.dtype == torch.float32 and torch.equal(x, x_old) and torch.equal(y, y_old)
