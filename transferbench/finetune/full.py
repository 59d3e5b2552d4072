"""Full fine-tuning with the upstream sparsity mask held fixed (transfer_protocol.md §4, pitfalls P5-P8).

Every backbone conv/linear weight is masked (the checkpoint's stored mask, else ``weight != 0``); the mask is
applied after every optimizer step, so momentum and weight decay never revive a pruned weight. The new head
is dense. BatchNorm trains (train mode). The run saves its state atomically after every epoch and resumes
from it: each epoch's shuffling is seeded from (seed, epoch) and each sample's augmentation from (seed, epoch,
index) alone, so a resumed run produces exactly the numbers of an uninterrupted one, with any number of
data-loading workers.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..atomic import set_aside, torch_save
from ..context import autocast
from ..errors import TransferbenchError, is_disk_error
from ..metrics import accuracy_metrics
from ..progress import progress
from ..runspec import HParams
from ..seeding import epoch_seed
from ..sparsity import FixedMasks, check_masks, measure_sparsity
from .features import host_copies_done, to_host_async
from .loaders import Batches, EpochLoaders, TorchLoaders
from .schedule import lr_at_epoch, should_evaluate

log = logging.getLogger("transferbench")

STATE_FILE = "train_state.pt"


@dataclass
class FullResult:
    test_logits: np.ndarray
    test_labels: np.ndarray
    top1: float
    mean_per_class_acc: float
    curve: list[dict]
    sparsity_before: dict
    sparsity_after: dict
    train_seconds: float
    resumed_from_epoch: int
    best_epoch: int
    best_top1: float


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: Batches, device: torch.device,
             precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        with autocast(device, precision):
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            logits.append(to_host_async(model(images).float()))  # no wait for the device per batch
        labels.append(targets)
    host_copies_done(device)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def finetune_full(
    model: torch.nn.Module,
    masks: dict[str, torch.Tensor],
    train_set: Dataset | None,
    test_set: Dataset | None,
    num_classes: int,
    hp: HParams,
    seed: int,
    work_dir: Path,
    device: torch.device,
    num_workers: int = 0,
    eval_batch_size: int = 128,
    loaders: EpochLoaders | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FullResult:
    """Fine-tune ``model`` (whose head is already the new, dense one) with ``masks`` held fixed.

    ``loaders`` replaces the default DataLoaders over ``train_set``/``test_set`` (e.g. FFCV's). ``on_epoch`` gets
    each curve point once its epoch's state is saved (a resumed run's earlier points first): tracker logging.
    """
    model.to(device, memory_format=torch.channels_last)  # measured faster on CPU too (benchmarks/bench_core.py)
    masks = {name: m.to(device) for name, m in masks.items()}
    keeper = FixedMasks(model, masks)
    keeper.apply()
    before = measure_sparsity(model, include_head=False)
    # Weight decay on every parameter, BN and biases included (pitfall P5): one param group.
    opt = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    # fp16: a dynamic loss scale keeps small gradients from flushing to zero (its step reads one flag per step on
    # the host: the fallback for GPUs without bfloat16 pays that sync). Disabled, it passes everything through.
    scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "fp16")
    state_path = work_dir / STATE_FILE
    curve, start_epoch, train_seconds = _resume(state_path, model, opt, scaler, device, hp.epochs)
    report = on_epoch or (lambda point: None)
    for point in curve:  # a resumed run's earlier epochs, so that a tracker sees the whole curve
        report(point)

    if loaders is None:
        loaders = TorchLoaders(train_set, test_set, hp.batch_size, eval_batch_size, num_workers, device)
    test_loader = loaders.test()
    for epoch in progress(range(start_epoch, hp.epochs), desc="full fine-tuning", unit="epoch",
                          initial=start_epoch, total=hp.epochs):
        t0 = time.perf_counter()
        lr = lr_at_epoch(hp, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(epoch_seed(seed, epoch))
        loader = loaders.train(epoch, epoch_seed(seed, epoch))
        point = {"epoch": epoch, "lr": lr,
                 "train_loss": _train_epoch(model, opt, keeper, loader, device, hp.precision, epoch, lr,
                                            scaler)}
        if should_evaluate(hp, epoch):  # always true for the last epoch, whose logits are the result
            logits, labels = evaluate(model, test_loader, device, hp.precision)
            point.update(accuracy_metrics(logits, labels, num_classes))
        train_seconds += time.perf_counter() - t0
        curve.append(point)
        torch_save(state_path, {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scaler": scaler.state_dict(), "curve": curve, "train_seconds": train_seconds})
        log.info("full epoch %d/%d lr=%g loss=%.4f%s", epoch + 1, hp.epochs, lr, point["train_loss"],
                 f" top1={point['top1']:.4f}" if "top1" in point else "")
        report(point)

    if start_epoch >= hp.epochs or "top1" not in curve[-1]:  # resumed after the last epoch, or never evaluated
        logits, labels = evaluate(model, test_loader, device, hp.precision)
    after = _check_mask_kept(model, masks, before)
    metrics = accuracy_metrics(logits, labels, num_classes)
    evaluated = [p for p in curve if "top1" in p]
    best = max(evaluated, key=lambda p: p["top1"])
    return FullResult(
        test_logits=logits, test_labels=labels, top1=metrics["top1"],
        mean_per_class_acc=metrics["mean_per_class_acc"], curve=curve,
        sparsity_before=before.to_dict(), sparsity_after=after.to_dict(), train_seconds=train_seconds,
        resumed_from_epoch=start_epoch, best_epoch=best["epoch"], best_top1=best["top1"],
    )


def _resume(state_path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            device: torch.device, epochs: int) -> tuple[list[dict], int, float]:
    """Load the state saved after the last finished epoch, if any: (curve, epochs done, training seconds).

    A state that cannot be read or does not fit this run (truncated, garbage, another model) would fail every
    rerun: it is set aside (``atomic.set_aside``) with a note and the run starts over from epoch 0, with the model,
    optimizer and loss scale as they were before the attempt.
    """
    if not state_path.exists():
        return [], 0, 0.0
    before = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()),
              scaler.state_dict())
    try:
        state = torch.load(state_path, map_location=device, weights_only=True)
        _check_state(state, epochs)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # fp16's loss scale continues where it was (an empty dict when disabled)
            scaler.load_state_dict(state["scaler"])
    except Exception as exc:  # whatever a corrupt file raises (zip, unpickling, shapes, missing keys)
        if is_disk_error(exc):  # the disk, not the file: the one-line error of the CLI
            raise
        model.load_state_dict(before[0])
        opt.load_state_dict(before[1])
        scaler.load_state_dict(before[2])
        set_aside(state_path, f"{type(exc).__name__}: {exc}")
        return [], 0, 0.0
    log.info("full: resuming from %s after epoch %d", state_path, state["epoch"])
    return state["curve"], state["epoch"], state["train_seconds"]


def _check_state(state: object, epochs: int) -> None:
    """Raise ValueError unless ``state`` is a resume state this run wrote: a dict whose epoch is a finished epoch
    of the run and whose curve has one point per finished epoch."""
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "curve", "train_seconds"} <= state.keys():
        raise ValueError("not a full fine-tuning resume state")
    epoch, curve = state["epoch"], state["curve"]
    if not isinstance(epoch, int) or not 0 < epoch <= epochs or not isinstance(curve, list) or len(curve) != epoch:
        raise ValueError(f"epoch {epoch!r} with {len(curve) if isinstance(curve, list) else '?'} curve points does "
                         f"not fit a run of {epochs} epochs")
    if not isinstance(state["train_seconds"], float | int):
        raise ValueError("train_seconds is not a number")


# Steps between reads of the running loss on the host: each read waits for the device to finish its queue, so the
# loss and its finite-check stay on the device in between (a diverged run is still stopped within this many steps).
FINITE_CHECK_EVERY = 64


def _train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, keeper: FixedMasks, loader,
                 device: torch.device, precision: str, epoch: int, lr: float,
                 scaler: torch.amp.GradScaler | None = None) -> float:
    """One epoch of SGD with the mask re-applied after every step; returns the mean training loss.

    The losses are summed on the device in float64 (the same sum, bit for bit, as adding each ``loss.item()`` in
    Python) and read every ``FINITE_CHECK_EVERY`` steps and at the end: a non-finite loss makes the sum non-finite,
    so that read is also the finite-check, and the first bad step is kept on the device for the error message.
    """
    model.train()  # BN statistics adapt to the downstream data (pitfall P6)
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    steps = 0
    for images, targets in progress(loader, desc=f"epoch {epoch + 1}", unit="batch"):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = training_loss(model(images).float(), targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)  # skipped (and the scale lowered) when fp16 gradients overflowed
        scaler.update()
        keeper.apply()  # pitfall P7: pruned weights stay exactly zero
        loss = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), steps, first_bad)
        loss_sum += loss
        steps += 1
        if steps % FINITE_CHECK_EVERY == 0:
            _check_finite(loss_sum, first_bad, epoch, lr)
    return _check_finite(loss_sum, first_bad, epoch, lr) / max(steps, 1)


def training_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class indices [B]; for a multi-label task (0/1 targets [B, K], one sigmoid output per
    attribute, as the CelebA bias study trains) the mean binary cross-entropy over every output of the batch."""
    if targets.ndim == 2:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets)


def _check_finite(loss_sum: torch.Tensor, first_bad: torch.Tensor, epoch: int, lr: float) -> float:
    """The running loss sum on the host (one sync), or the divergence error naming the first non-finite step."""
    total = loss_sum.item()
    if not math.isfinite(total):
        raise TransferbenchError(
            f"full fine-tuning loss became NaN/inf at epoch {epoch} step {int(first_bad.item())} (lr={lr:g}); "
            "lower --lr or check the checkpoint and the data"
        )
    return total


def _check_mask_kept(model: torch.nn.Module, masks: dict[str, torch.Tensor], before):
    """The backbone's sparsity after fine-tuning; an error if any masked weight came back."""
    revived = check_masks(model, masks)
    after = measure_sparsity(model, include_head=False)
    if revived or after.zeros < before.zeros:
        raise RuntimeError(f"mask violated after fine-tuning: {revived} masked weights are non-zero, "
                           f"backbone sparsity {before.overall:.6f} -> {after.overall:.6f}")
    return after
