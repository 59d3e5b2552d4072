"""Frozen-backbone feature extraction, cached on disk and shared by every seed and rerun (pitfall P2)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..atomic import set_aside, torch_save
from ..context import autocast
from ..errors import is_disk_error
from ..progress import progress
from .workers import leave_signals_to_main

log = logging.getLogger("transferbench")


@dataclass
class Features:
    features: torch.Tensor  # [N, D] float32, on CPU
    labels: torch.Tensor  # [N] int64 ([N, K] of 0/1 for a multi-label task)
    seconds: float  # time spent extracting (0.0 when read from the cache)
    cached: bool
    path: Path | None


def feature_cache_key(checkpoint_sha256: str, task: str, split: str, transform: dict, data: dict) -> str:
    material = {"checkpoint": checkpoint_sha256, "task": task, "split": split, "transform": transform,
                "data": data}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def extract(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
            num_workers: int, desc: str, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the backbone in eval mode (BN uses the upstream running statistics) over ``dataset`` in order.

    channels_last is used on every device: it is measured faster on CPU too (benchmarks/bench_core.py). The model
    is moved outside inference mode: tensors made inside it are inference tensors, and parameters that became ones
    could never be trained again (a later backward on the same model raises).
    """
    model.eval().to(device, memory_format=torch.channels_last)
    with torch.inference_mode():
        return _extract_batches(model, dataset, batch_size, device, num_workers, desc, precision)


def _extract_batches(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                     num_workers: int, desc: str, precision: str,
                     input_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward passes of ``extract``: under ``precision``'s autocast, or, given ``input_dtype`` (a model cast
    to a half precision itself: ``semi_structured``), with the batches cast to it and no autocast."""
    if getattr(dataset, "prebatched", False):  # a fast loader's split (fastdata.ffcv_loader) batches itself
        loader = dataset.batches(batch_size, num_workers, device)  # type: ignore[attr-defined]
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            worker_init_fn=leave_signals_to_main)
    feats, labels = [], []
    for images, targets in progress(loader, desc=desc, unit="batch"):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if input_dtype is not None:
            images = images.to(input_dtype)
        with autocast(device, precision if input_dtype is None else "fp32"):
            feats.append(to_host_async(model.forward_features(images).float()))
        labels.append(targets)
    host_copies_done(device)
    return torch.cat(feats), torch.cat(labels).long()


def to_host_async(output: torch.Tensor) -> torch.Tensor:
    """``output`` on the host without waiting for the device: a GPU tensor is copied into pinned memory
    asynchronously (read it only after ``host_copies_done``); a host tensor is returned as it is."""
    if output.device.type != "cuda":
        return output
    host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
    return host.copy_(output, non_blocking=True)


def host_copies_done(device: torch.device) -> None:
    """Wait, once, for every ``to_host_async`` copy queued on ``device``'s current stream."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def extract_with(engine: str, model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                 num_workers: int, desc: str, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """``extract`` with PyTorch (``engine="torch"``), with DeepSparse on the CPU (``"deepsparse"``) or with 2:4
    sparse kernels on an Ampere+ GPU in fp16/bf16 (``"semi-structured"``: ``semi_structured``)."""
    if engine == "deepsparse":
        from .sparse_cpu import extract_deepsparse

        return extract_deepsparse(model, dataset, batch_size, num_workers, desc)
    if engine == "semi-structured":  # the model's inference copy, cast to the half precision: no autocast
        from .semi_structured import HALF_DTYPES, semi_structured_model

        sparse, _ = semi_structured_model(model, precision, device)
        with torch.inference_mode():
            return _extract_batches(sparse, dataset, batch_size, device, num_workers, desc, precision,
                                    input_dtype=HALF_DTYPES[precision])
    return extract(model, dataset, batch_size, device, num_workers, desc, precision)


def cached_features(cache_dir: Path | None, key: str, compute) -> Features:
    """Load the features stored under ``key``, or compute and store them (atomically).

    A cache entry is disposable: one that cannot be read or holds anything but an [N, D] float32 feature matrix
    with N int64 labels is set aside (``atomic.set_aside``, one note line) and computed again.
    """
    path = cache_dir / f"{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            check_feature_blob(blob)
            log.info("features: reusing %s", path)
            return Features(blob["features"], blob["labels"], 0.0, True, path)
        except Exception as exc:  # whatever a corrupt file raises (zip, unpickling, the checks below)
            if is_disk_error(exc):  # the disk, not the entry: the one-line error of the CLI
                raise
            set_aside(path, f"{type(exc).__name__}: {exc}")
    start = time.perf_counter()
    features, labels = compute()
    seconds = time.perf_counter() - start
    if path is not None:
        torch_save(path, {"features": features, "labels": labels})
        log.info("features: cached %s (%d x %d, %.1f s)", path, *features.shape, seconds)
    return Features(features, labels, seconds, False, path)


def check_feature_blob(blob: object) -> None:
    """Raise ValueError unless ``blob`` is a feature cache entry: {"features": [N, D] float32, "labels": [N] int64
    (a multi-label task's: [N, K] of 0/1)} with N, D > 0."""
    if not isinstance(blob, dict) or not all(isinstance(blob.get(k), torch.Tensor) for k in ("features", "labels")):
        raise ValueError("not a feature cache entry (features and labels tensors)")
    features, labels = blob["features"], blob["labels"]
    if features.dtype != torch.float32 or features.ndim != 2 or 0 in features.shape:
        raise ValueError(f"features are {features.dtype} {tuple(features.shape)}, not a float32 [N, D] matrix")
    if labels.dtype != torch.int64 or labels.ndim not in (1, 2) or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels are {labels.dtype} {tuple(labels.shape)}, not {features.shape[0]} int64 labels "
                         "(or rows of 0/1 attributes)")
