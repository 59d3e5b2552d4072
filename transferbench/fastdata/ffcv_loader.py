"""``--loader ffcv``: the protocol's transforms as FFCV pipelines over the ``.beton`` files of `data convert`.

- train (full fine-tuning): random-resized-crop (scale 0.08-1, ratio 3/4-4/3, torchvision's defaults) + flip +
  normalisation with the task's mean/std;
- test, and both splits of linear extraction: center crop of ``image_size/resize_size`` (224/256) of the shorter
  side, resized to ``image_size``, + normalisation.

Determinism: the sample order of epoch ``e`` is a permutation drawn from the run's per-epoch seed, so a resumed
run visits the samples of each remaining epoch in the same order as an uninterrupted one; test and extraction
order is the split's own. FFCV draws crops and flips from numba's per-thread RNG, which ffcv 1.0.2 gives no way
to seed, so augmented full fine-tuning is NOT bit-reproducible (a resumed or repeated run differs like another
augmentation draw would). Test images and linear features are deterministic.

On a GPU the uint8 crops are moved there by FFCV (``ToDevice``: a quarter of float32's bytes over PCIe) and
normalised there by a lookup in NormalizeImage's own float32 table (``normalize_by_table``), so the floats are those
of the host pipeline bit for bit (tests/test_ffcv.py), with no float work on the host and no cupy dependency (FFCV's
GPU NormalizeImage needs cupy and rounds to float16).

Pipeline order matters: every numba-jitted op (decoder, flip, NormalizeImage) comes before the first torch op
(ToTensor); a jitted op after a non-jitted one makes ``Loader()`` spin forever (libffcv/ffcv#396).
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import TransferbenchError
from ..tasks import Split, TaskSpec
from ..transforms import TransformConfig
from . import (
    DEFAULT_MAX_RESOLUTION,
    DEFAULT_QUALITY,
    SIDECAR_FORMAT,
    beton_path,
    convert_command,
    ffcv_root,
    labels_digest,
    require_ffcv,
    sidecar_path,
    torch_threads_kept,
)


def find_beton(dataset: str, split: Split, name: str, data_root: str | Path | None) -> tuple[Path, dict]:
    """The ``.beton`` of ``name`` ("train"/"test") that matches ``split``; a one-line error when missing or stale.

    The one conversion present is used. Several (say the default jpg and a raw one) are refused: the run has no
    flag to choose, and picking one silently could train on the conversion the user did not mean.
    """
    root = ffcv_root(data_root)
    default = beton_path(root, dataset, name, DEFAULT_MAX_RESOLUTION, DEFAULT_QUALITY)
    found = sorted(p for p in default.parent.glob(f"{name}_r*.beton") if sidecar_path(p).exists())
    command = convert_command(dataset, data_root)
    if not found:
        raise TransferbenchError(f"--loader ffcv: {default} does not exist; write it with `{command}`")
    if len(found) > 1:
        raise TransferbenchError(
            f"--loader ffcv: several conversions of the {name} split in {default.parent} "
            f"({', '.join(p.name for p in found)}); delete all but one (the .beton and its .json)"
        )
    path = found[0]
    meta = json.loads(sidecar_path(path).read_text())
    now = {"format": SIDECAR_FORMAT, "num_samples": len(split), "labels_digest": labels_digest(split.labels),
           "layout": split.layout, "source_root": str(split.root)}
    stale = {k: (meta.get(k), v) for k, v in now.items() if meta.get(k) != v}
    if stale:
        what = ", ".join(f"{k} {old!r} (data now: {new!r})" for k, (old, new) in stale.items())
        raise TransferbenchError(f"--loader ffcv: {path} is stale: written with {what}; re-write it with "
                                 f"`{command}`")
    return path, meta


def _order_class():
    from ffcv.traversal_order.base import TraversalOrder

    class EpochSeededOrder(TraversalOrder):
        """A permutation drawn from ``epoch_seed``, set before each epoch (ffcv's own RANDOM order adds the epoch
        counter of the Loader object to its seed, which a resumed process would have to replay)."""

        epoch_seed: int | None = None  # None: the split's order (test, extraction)
        planned: np.ndarray | None = None  # an explicit order (an upstream rank's share of the global batches)

        def sample_order(self, epoch: int) -> np.ndarray:
            if self.planned is not None:
                return self.planned
            if self.epoch_seed is None:
                return np.asarray(self.indices)
            return np.random.default_rng(self.epoch_seed).permutation(self.indices)

    return EpochSeededOrder


def normalization_site(device: torch.device | None) -> str:
    """Where a split read for ``device`` is normalised (recorded; the numbers are the same either way)."""
    return "lookup on the GPU" if on_gpu(device) else "on the host"


def on_gpu(device: torch.device | None) -> bool:
    return device is not None and device.type == "cuda"


def normalization_table(cfg: TransformConfig) -> torch.Tensor:
    """[256, 3] float32: uint8 value v of channel c → (v - 255·mean_c) / (255·std_c), computed as FFCV's
    NormalizeImage computes its table (float64, then float32), so a lookup gives its floats bit for bit."""
    mean, std = np.array(cfg.mean) * 255, np.array(cfg.std) * 255
    return torch.from_numpy(((np.arange(256)[:, None] - mean[None, :]) / std[None, :]).astype(np.float32))


def normalize_by_table(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, C, H, W] → float32 through ``normalization_table``, on the images' device."""
    channels = pixels.shape[1]
    channel = torch.arange(channels, device=pixels.device).view(1, channels, 1, 1)
    return table.to(pixels.device).flatten()[pixels.long() * channels + channel]


def _pipelines(cfg: TransformConfig, pixels_to: torch.device | None = None) -> dict:
    """FFCV's pipelines for ``cfg``: normalised floats on the host, or with ``pixels_to`` the uint8 crops moved
    there by FFCV (``ToDevice``: a quarter of float32's bytes over PCIe, no float work on the host) for
    ``normalize_by_table`` to normalise on that device."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    size = (cfg.image_size, cfg.image_size)
    if cfg.augment:
        spatial = [RandomResizedCropRGBImageDecoder(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                   RandomHorizontalFlip()]
    else:
        spatial = [CenterCropRGBImageDecoder(size, ratio=cfg.image_size / cfg.resize_size)]
    labels = [IntDecoder(), ToTensor()]
    if pixels_to is not None:
        return {"image": [*spatial, ToTensor(), ToDevice(pixels_to, non_blocking=True),
                          ToTorchImage(channels_last=True)], "label": labels}
    normalize = NormalizeImage(np.array(cfg.mean) * 255, np.array(cfg.std) * 255, np.float32)
    # jitted ops first, torch ops last (libffcv/ffcv#396)
    return {"image": [*spatial, normalize, ToTensor(), ToTorchImage(channels_last=True)], "label": labels}


class RingHandoff:
    """Takes each batch's images out of FFCV's ring of reused (possibly pinned) buffers before the next batch is
    fetched, so no reader of a buffer can outlive its reuse, whatever the consumer does with the batch.

    On a CUDA device the copy is asynchronous on a side stream (it overlaps the previous step's compute, which the
    consumer's stream keeps queuing) and ``wait`` blocks on that copy alone before the ring is advanced. Elsewhere
    the images are cloned on the host (one memcpy per batch, negligible next to a CPU step).
    """

    def __init__(self, device: torch.device | None) -> None:
        self.device = device if device is not None and device.type == "cuda" else None
        self.stream = torch.cuda.Stream(self.device) if self.device is not None else None
        self.pending = None  # the event of the copy still reading a ring buffer, if any

    def take(self, images: torch.Tensor) -> torch.Tensor:
        if self.device is None:
            return images.clone()
        consumer = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(consumer)  # pixels FFCV moved to the device are ready on the consumer's stream
        with torch.cuda.stream(self.stream):
            on_device = images.to(self.device, non_blocking=True, copy=True)  # a copy even if already there
            self.pending = torch.cuda.Event()
            self.pending.record(self.stream)
        consumer.wait_stream(self.stream)  # the consumer's kernels read the batch after the copy
        on_device.record_stream(consumer)  # and the caching allocator keeps it until they have
        return on_device

    def wait(self) -> None:
        """Block until no copy reads a ring buffer: call before FFCV may overwrite one (the next fetch)."""
        if self.pending is not None:
            self.pending.synchronize()
            self.pending = None


class FFCVBatches:
    """Batches of (float32 NCHW normalised images, int64 labels) from one ``.beton``; re-iterable.

    The images are taken out of FFCV's ring of buffers (``RingHandoff``): on ``device`` when it is a CUDA device,
    else as a host copy; callers may keep them. Labels are copied too.
    """

    table: torch.Tensor | None = None  # ``normalization_table`` when the pipeline hands over uint8 pixels

    def __init__(self, path: Path, cfg: TransformConfig, batch_size: int, num_workers: int,
                 drop_last: bool = False, device: torch.device | None = None,
                 pixels_to: torch.device | None = None) -> None:
        require_ffcv()
        from ffcv.loader import Loader, OrderOption
        from numba import config as numba_config

        # Collect the jitted pipelines of earlier loaders now: numba's finalizers for them raise, and when that
        # happens inside the ast.parse of ffcv's code generation, Python 3.11 turns it into "SystemError: AST
        # constructor recursion depth mismatch" (CPython gh-106905).
        gc.collect()
        self.path, self.batch_size, self.device = path, batch_size, device
        # On a GPU the uint8 pixels go there and are normalised there (``pixels_to`` forces it, for tests on CPU).
        self.pixels_to = pixels_to if pixels_to is not None else (device if on_gpu(device) else None)
        self.table = normalization_table(cfg) if self.pixels_to is not None else None
        # numba refuses more threads than it started with (the machine's cores): clamp, rather than fail.
        threads = min(max(1, num_workers), numba_config.NUMBA_NUM_THREADS)
        with torch_threads_kept():
            self.loader = Loader(str(path), batch_size=batch_size, num_workers=threads,
                                 order=OrderOption.SEQUENTIAL, pipelines=_pipelines(cfg, self.pixels_to),
                                 drop_last=drop_last,
                                 os_cache=True)
        # ffcv 1.0.2 rejects a TraversalOrder class as `order=` (it tests isinstance, then calls it): swap it in.
        self.loader.traversal_order = _order_class()(self.loader)
        self.num_samples = int(self.loader.reader.num_samples)

    def epoch(self, epoch_seed: int | None) -> FFCVBatches:
        """Shuffle the next pass with ``epoch_seed`` (None: the file's order)."""
        self.loader.traversal_order.epoch_seed = epoch_seed
        return self

    def planned(self, order: np.ndarray) -> FFCVBatches:
        """Read exactly these samples, in this order, in the next passes."""
        self.loader.traversal_order.planned = np.asarray(order, dtype=np.int64)
        return self

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        threads = torch.get_num_threads()
        batches = iter(self.loader)
        handoff = RingHandoff(self.device)
        try:
            while True:
                handoff.wait()  # the last batch's copy is done before FFCV may reuse its buffer
                fetched = next(batches, None)
                if fetched is None:
                    return
                images, labels = fetched
                # iter() and ffcv's epoch thread both call torch.set_num_threads; with OpenMP the thread's call
                # can land after iter() returns, so the count is restored before each batch is used.
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                images = handoff.take(images)
                if self.table is not None:
                    images = normalize_by_table(images, self.table)
                yield images, labels.reshape(-1).to(torch.int64, copy=True)  # FFCV reuses both
        finally:  # an epoch left early (an error, a break) must not leave ffcv's thread and buffers behind
            batches.close()
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


@dataclass
class FFCVSplit:
    """One split for linear extraction: ``features.extract`` asks it for batches instead of building a
    DataLoader (``prebatched``)."""

    path: Path
    meta: dict
    cfg: TransformConfig
    prebatched: bool = field(default=True, init=False)

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    def batches(self, batch_size: int, num_workers: int, device: torch.device | None = None) -> FFCVBatches:
        return FFCVBatches(self.path, self.cfg, batch_size, num_workers, device=device).epoch(None)

    def key_info(self) -> dict:
        """What the feature-cache key needs beyond the torchvision path's: the loader and the conversion (its
        file's size and time, so a re-conversion never reuses features of the old file)."""
        stat = self.path.stat()
        return {"loader": "ffcv", **self.describe(), "beton_size": stat.st_size, "beton_mtime_ns": stat.st_mtime_ns}

    def describe(self) -> dict:
        """The conversion the run read (recorded in full fine-tuning records; part of linear feature keys)."""
        return {"beton": self.path.stem, "beton_format": self.meta["format"]}


def open_split(task: TaskSpec, split: Split, name: str, data_root: str | Path | None,
               cfg: TransformConfig) -> FFCVSplit:
    require_ffcv()
    path, meta = find_beton(task.name, split, name, data_root)
    return FFCVSplit(path, meta, cfg)


class FFCVLoaders:
    """The ``finetune_full`` loader factory (see ``finetune.full.EpochLoaders``) over the two ``.beton`` files."""

    def __init__(self, train: FFCVSplit, test: FFCVSplit, batch_size: int, eval_batch_size: int,
                 num_workers: int, device: torch.device | None = None) -> None:
        self._train = FFCVBatches(train.path, train.cfg, batch_size, num_workers, device=device)
        self._test = FFCVBatches(test.path, test.cfg, eval_batch_size, num_workers, device=device)
        self.splits, self.device = {"train": train, "test": test}, device

    def describe(self) -> dict:
        return {**{name: split.describe() for name, split in self.splits.items()},
                "normalization": normalization_site(self.device)}

    def train(self, epoch: int, epoch_seed: int) -> FFCVBatches:
        return self._train.epoch(epoch_seed)

    def test(self) -> FFCVBatches:
        return self._test.epoch(None)


def ffcv_loaders(task: TaskSpec, train: Split, test: Split, data_root: str | Path | None,
                 train_cfg: TransformConfig, test_cfg: TransformConfig, batch_size: int, eval_batch_size: int,
                 num_workers: int, device: torch.device | None = None) -> FFCVLoaders:
    """Both splits checked against the data on disk (one-line errors) before any training starts; batches are
    handed over on ``device`` when it is a CUDA device (``RingHandoff``)."""
    return FFCVLoaders(open_split(task, train, "train", data_root, train_cfg),
                       open_split(task, test, "test", data_root, test_cfg), batch_size, eval_batch_size,
                       num_workers, device)
