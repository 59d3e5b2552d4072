"""``transferbench data convert``: one task's splits → FFCV ``.beton`` files plus a JSON sidecar.

The sidecar records what the file was written from (sample count, labels digest, layout, root) so a run can
refuse a file that no longer matches the data on disk instead of training on stale images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..atomic import write_json
from ..errors import TransferbenchError
from ..progress import interactive
from ..tasks import Split, get_task, load_split
from . import (
    DEFAULT_MAX_RESOLUTION,
    DEFAULT_QUALITY,
    FFCV_DIR_ENV,
    SIDECAR_FORMAT,
    WRITE_MODES,
    beton_path,
    ffcv_root,
    labels_digest,
    require_ffcv,
    sidecar_path,
)

log = logging.getLogger("transferbench")


class _RGBArrays(Dataset):
    """(HxWx3 uint8 RGB array, label): what ffcv's RGBImageField encodes. Grey/CMYK/RGBA files become RGB here,
    as ``Transformed`` does for the torchvision path (pitfall P13).

    Never raises: ffcv's writer waits forever for a sample whose worker process died (ffcv 1.0.2 never checks
    its workers). An unreadable image, or one so thin that ffcv's resize would make it 0 px wide, is written as a
    black 8x8 placeholder and its error appended to ``errors``; ``convert_task`` then refuses the file.
    """

    def __init__(self, dataset: Dataset, max_resolution: int, errors: Path) -> None:
        self.dataset, self.max_resolution, self.errors = dataset, max_resolution, errors

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            img, label = self.dataset[index]
            if not isinstance(img, Image.Image):  # the mini-tasks hold uint8 arrays
                img = Image.fromarray(np.asarray(img, dtype=np.uint8))
            pixels = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
            short, long = sorted(pixels.shape[:2])
            if long > self.max_resolution and short * self.max_resolution < long:
                raise TransferbenchError(f"image {index} is {pixels.shape[1]}x{pixels.shape[0]} px: at "
                                         f"--max-resolution {self.max_resolution} it would be 0 px wide")
            return pixels, int(label)
        except Exception as exc:  # any error must reach the parent, not kill the worker
            message = " ".join(str(exc).split()) or type(exc).__name__
            with open(self.errors, "a") as f:  # one short append per error: whole lines even from many workers
                f.write(f"{message}\n")
            return np.zeros((8, 8, 3), dtype=np.uint8), 0


@contextmanager
def _writer_progress(desc: str) -> Iterator[None]:
    """ffcv's writer draws a tqdm bar unconditionally; here it follows the project's rule (a terminal only)."""
    import ffcv.writer

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = partial(original, desc=desc, leave=False, disable=not interactive())
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


def imagenet_splits(data_root: str | Path | None) -> dict[str, Split]:
    """ImageNet as ``upstream --dataset imagenet`` reads it: DIR/train/<wnid>/ and DIR/val/<wnid>/ (ImageFolder);
    written as ``imagenet/train_*.beton`` and ``imagenet/val_*.beton`` for ``upstream --loader ffcv``."""
    from torchvision.datasets import ImageFolder

    from ..tasks.data import read_rgb_image

    root = Path(data_root).expanduser() if data_root is not None else None
    if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
        raise TransferbenchError("data convert --task imagenet needs --data-root DIR with DIR/train/<wnid>/ and "
                                 "DIR/val/<wnid>/")
    # read_rgb_image: pil_loader's pixels, with PIL's decompression-bomb warning an error as in every other reader
    folders = {name: ImageFolder(root / name, loader=read_rgb_image) for name in ("train", "val")}
    return {name: Split(folder, list(folder.targets), list(folder.classes), "imagefolder", root / name)
            for name, folder in folders.items()}


# Upstream training sets `data convert --task NAME` writes besides the downstream tasks.
UPSTREAM_DATASETS = {"imagenet": imagenet_splits}


def convert_task(task: str, data_root: str | Path | None = None, out: str | Path | None = None,
                 max_resolution: int = DEFAULT_MAX_RESOLUTION, quality: int = DEFAULT_QUALITY,
                 splits: tuple[str, ...] = ("train", "test"), num_workers: int | None = None,
                 write_mode: str = "jpg") -> list[dict]:
    """Write ``<out>/<task>/<split>_r<res>_q<quality>.beton`` (``_raw`` for raw pixels) for each split; returns
    the sidecars written."""
    if write_mode not in WRITE_MODES:
        raise TransferbenchError(f"--write-mode {write_mode}: choose from {' '.join(WRITE_MODES)}")
    if max_resolution < 8:
        raise TransferbenchError(f"--max-resolution {max_resolution} is too small; use the default "
                                 f"{DEFAULT_MAX_RESOLUTION} (longest image side after conversion)")
    if not 1 <= quality <= 100:
        raise TransferbenchError(f"--quality {quality} must be a JPEG quality in 1..100 (default {DEFAULT_QUALITY})")
    if task in UPSTREAM_DATASETS:  # an upstream training set (ImageNet), not one of the downstream tasks
        dataset_name, loaded = task, UPSTREAM_DATASETS[task](data_root)
    else:
        unknown = sorted(set(splits) - {"train", "test"})
        if unknown:
            raise TransferbenchError(f"--splits {' '.join(unknown)}: choose from train test")
        spec = get_task(task)
        dataset_name = spec.name
        loaded = {name: load_split(spec, name, data_root) for name in splits}  # data errors before ffcv's import
    require_ffcv("transferbench data convert")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    root = Path(out).expanduser() if out is not None else ffcv_root(data_root)
    workers = max(1, num_workers if num_workers is not None else min(4, os.cpu_count() or 1))
    written = []
    for name, split in loaded.items():
        path = beton_path(root, dataset_name, name, max_resolution, quality, write_mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=quality),
                  "label": IntField()}
        errors = tmp.with_suffix(".errors")
        try:
            # The sample order is the split's own order, so index i of the .beton is index i of load_split.
            with _writer_progress(f"convert {dataset_name} {name}"):
                DatasetWriter(str(tmp), fields, num_workers=workers).from_indexed_dataset(
                    _RGBArrays(split.dataset, max_resolution, errors), chunksize=64)
            if errors.exists():
                failed = errors.read_text().splitlines()
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                raise TransferbenchError(f"data convert --task {dataset_name}: {failed[0]}{more}; nothing written "
                                         f"for the {name} split")
            sidecar_path(path).unlink(missing_ok=True)  # never a new .beton beside the old file's sidecar
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            errors.unlink(missing_ok=True)
        sidecar = {"format": SIDECAR_FORMAT, "task": dataset_name, "split": name, "num_samples": len(split),
                   "labels_digest": labels_digest(split.labels), "num_classes": len(split.classes),
                   "layout": split.layout, "source_root": str(split.root), "max_resolution": max_resolution,
                   "write_mode": write_mode, "jpeg_quality": quality if write_mode == "jpg" else None,
                   "beton": str(path)}
        # Written after the .beton is in place: a sidecar is the mark of a complete file.
        write_json(sidecar_path(path), sidecar)
        log.info("ffcv: wrote %s (%d images)", path, len(split))
        written.append(sidecar)
    if out is not None and root != ffcv_root(data_root):
        log.info("runs look in %s: set %s=%s for `transferbench run --loader ffcv`", ffcv_root(data_root),
                 FFCV_DIR_ENV, root)
    return written
