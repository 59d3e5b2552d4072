"""`transferbench upstream`: train/prune an upstream model with a method and register the checkpoint(s).

One loop serves every method and recipe: pruners are hooks (pruning/base.py), CrAM is an optimizer wrapper.
The loop runs as one process or as one process per GPU under ``torch.distributed`` (``distributed``; launched by
torchrun or a SLURM multi-task job), saves its state after every epoch and resumes from it (``state``), and reads
images with loader workers (``data``). Multi-label data (CelebA, faces: ``attributes``) trains with binary
cross-entropy, and where the data has a validation split the registered model is the epoch that ``selection``
keeps (the study's best-validation checkpoint at the highest sparsity), not the last one. The result is written in
the project's checkpoint format (checkpoints/save.py) and registered in the user's local registry, so
``transferbench run --method M --sparsity S`` finds it. Running the same command again skips a run already
registered with the same identity.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoints import checkpoint_dir, local_path
from ..checkpoints.registry import named_checkpoint
from ..errors import TransferbenchError
from ..finetune.full import training_loss
from ..models import create_model
from ..progress import progress
from ..pruning.base import Pruner, training_step
from ..pruning.factory import build, pruner_name
from ..pruning.lth import rounds_for_sparsity
from ..tracking import Tracking, require_trackers
from .attributes import has_validation_split
from .candidates import UpstreamResult, evaluate, one_shot_candidates, register_candidate
from .data import DATA_ORDER, FisherBatches, TrainBatches, train_batches
from .datasets import check_upstream_dataset, upstream_data
from .distributed import (
    World,
    broadcast_object,
    check_same_on_every_rank,
    convert_sync_batchnorm,
    join_world,
    revert_sync_batchnorm,
)
from .optimizers import make_optimizer
from .options import LoopOptions
from .recipes import checked_sparsities, checkpoint_name, lr_at, method_recipe, recipe_method
from .selection import SELECTION_RULE, BestCheckpoint
from .state import discard_state, load_state, run_identity, save_state, state_dir

log = logging.getLogger("transferbench")

# Steps between two host reads of the loss (its finite check): a read every step would stall a GPU once a step.
CHECK_EVERY = 64
# Pruners that compute a loss of their own (WoodFisher's Fisher gradients: cross-entropy) or draw a class-balanced
# calibration sample (CrAM's candidates): not defined for multi-label targets.
CLASS_INDEX_PRUNERS = ("woodfisher", "cram", "cram_nm")


def upstream_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy (with the recipe's label smoothing) against class indices [B]; for multi-label 0/1 targets
    [B, K] the mean binary cross-entropy with logits over every output (the study's ``BCEWithLogitsLoss``), which
    is the fine-tuning loss of multi-label tasks too (``finetune.full.training_loss``)."""
    if targets.ndim == 2:
        return training_loss(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


class Forward(nn.Module):
    """The training forward pass: inputs moved to the model's device, dtype and memory format; bf16 autocast as a
    switch (logits back in the model's dtype for the loss)."""

    def __init__(self, net: nn.Module, device: torch.device, options: LoopOptions) -> None:
        super().__init__()
        self.net, self.device, self.options = net, device, options
        self.dtype = torch.float64 if options.precision == "fp64" else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.options.precision == "bf16"):
            return self.net(x).to(self.dtype)


def train_loop(forward: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner, loader: TrainBatches, recipe: dict,
               epochs: int, base_lr: float, *, start_epoch: int = 0, schedule_epochs: int | None = None,
               end_of_epoch=None, desc: str = "upstream") -> list[float]:
    """Epochs ``start_epoch..epochs-1`` of SGD with the pruner's hooks; returns each epoch's mean loss.

    The LR schedule spans ``schedule_epochs`` (default: the whole run) and restarts after each such period
    (IMP's per-round restart). ``end_of_epoch(epoch, mean_loss)`` runs after every epoch (the resume state).
    """
    period = schedule_epochs or epochs
    smoothing = float(recipe.get("label_smoothing", 0.0))
    steps_per_epoch = len(loader)
    losses = []
    for epoch in progress(range(start_epoch, epochs), desc=desc, unit="epoch", initial=start_epoch, total=epochs):
        forward.train()
        loader.set_epoch(epoch)
        started, checked = time.perf_counter(), epoch * steps_per_epoch
        loss_sum = torch.zeros((), dtype=torch.float64, device=forward.device)  # read on the host every k steps
        for i, (x, y) in enumerate(loader):
            step = epoch * steps_per_epoch + i
            lr = lr_at(recipe["schedule"], epoch % period + i / steps_per_epoch, base_lr, period)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = training_step(forward, optimizer, pruner, x, y.to(forward.device, non_blocking=True), step,
                                 loss_fn=lambda logits, target: upstream_loss(logits, target, smoothing))
            loss_sum += loss.detach().double()
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps_per_epoch:
                if not torch.isfinite(loss_sum):
                    raise TransferbenchError(f"upstream loss became NaN/inf between steps {checked} and {step}; "
                                             "lower the recipe's lr")
                checked = step + 1
        seconds = time.perf_counter() - started
        losses.append(float(loss_sum) / steps_per_epoch)
        images = steps_per_epoch * len(x) * int(os.environ.get("WORLD_SIZE", "1"))
        log.info("%s epoch %d/%d loss=%.4f sparsity=%.4f lr=%.5g images/s=%.0f", desc, epoch + 1, epochs,
                 losses[-1], pruner.sparsity, lr, images / max(seconds, 1e-9))
        if end_of_epoch is not None:
            end_of_epoch(epoch, losses[-1])
    pruner.finalize()
    return losses


def train_upstream(method: str, sparsities: list[float], arch: str | None = None, dataset: str | None = None,
                   recipe: str | Path = "small_cpu", data_root: Path | None = None, seed: int = 0,
                   device: str = "auto", out_dir: Path | None = None, options: LoopOptions | None = None,
                   force: bool = False, batch_size: int | None = None,
                   trackers: Sequence[str] = ()) -> list[UpstreamResult]:
    """Train ``method`` with ``recipe`` and write + register one checkpoint per requested sparsity.

    Every method but CrAM and LTH-T takes exactly one sparsity. CrAM trains one dense model and produces one
    candidate per sparsity by one-shot pruning and BN recalibration (§6.3); LTH-T prunes to the largest and keeps
    the ticket of every requested sparsity's round on the way (§4.2). In a job of several processes (torchrun,
    SLURM) every process calls this; all of them return the results. ``force`` trains again a run already registered;
    ``batch_size`` runs the recipe at another global batch by its scaling rule (``recipes.method_recipe``);
    ``trackers`` (``--log``): the first process reports each epoch's loss, sparsity and lr, then the checkpoints'
    upstream top-1, to these experiment trackers (``transferbench.tracking``).
    """
    trackers = require_trackers(trackers)  # a backend not installed: its pip extra, before any work
    options = options or LoopOptions()
    method = recipe_method(method, recipe)  # lth_t → lth (vocabulary)
    sparsities = checked_sparsities(method, sparsities)
    rec, knobs = method_recipe(method, recipe, arch, dataset, batch_size=batch_size, sparsity=sparsities[0])
    check_upstream_dataset(rec["dataset"])
    for sparsity in sparsities:  # the files' names (names.check_name), before any work
        checkpoint_name(rec, method, sparsity, seed)
    world, dev = join_world(device)
    with Tracking(trackers if world.is_main else ()) as tracking:  # started only if it trains (not when registered)
        return _train(method, sparsities, rec, knobs, recipe, data_root, seed, device, out_dir, options, force,
                      world, dev, tracking)


def _train(method: str, sparsities: list[float], rec: dict, knobs: dict, recipe: str | Path,
           data_root: Path | None, seed: int, device: str, out_dir: Path | None, options: LoopOptions, force: bool,
           world: World, dev: torch.device, tracking: Tracking) -> list[UpstreamResult]:
    folder = Path(out_dir or checkpoint_dir() / "upstream")
    # a run that chooses its checkpoint on validation data says so in its identity (only then: every other run
    # keeps the identity it had, so its registered checkpoint is still found)
    chooses = {"selection": SELECTION_RULE} if has_validation_split(rec["dataset"]) else {}
    identity = run_identity(method=method, sparsities=sparsities, recipe=rec, knobs=knobs, seed=seed,
                            numbers=options.numbers(), world_size=world.size, data_order=DATA_ORDER, **chooses)
    done = None if force else already_registered(rec, method, sparsities, seed, identity)
    if done is not None:
        log.info("upstream %s: already registered with this configuration (%s); --force trains it again",
                 method, ", ".join(r.spec.name for r in done))
        return done
    work = state_dir(folder, checkpoint_name(rec, method, sparsities[0], seed), identity)
    if force:
        discard_state(work, world)
        world.barrier()
    start = time.perf_counter()
    run = _build_run(method, sparsities, rec, knobs, recipe, data_root, seed, device, options, world, dev)
    model, optimizer, pruner, loader, epochs = run["model"], run["optimizer"], run["pruner"], run["loader"], \
        run["epochs"]
    resumed = load_state(work, world, dev, model=model, optimizer=optimizer, pruner=pruner,
                         generators=run["generators"])
    earlier_seconds, losses = (resumed.train_seconds, resumed.losses) if resumed else (0.0, [])
    best = BestCheckpoint() if run["validation_set"] is not None else None
    if best is not None and resumed is not None and resumed.selection is not None:
        best.load_state_dict(resumed.selection)
    evaluated = Forward(model, dev, options)  # the validation pass: inputs in the model's dtype and format

    def end_of_epoch(epoch: int, loss: float) -> None:
        losses.append(loss)
        point = {"epoch": epoch, "train_loss": loss, "sparsity": float(pruner.sparsity),
                 "lr": optimizer.param_groups[0]["lr"]}
        if best is not None and world.is_main:  # rank 0 registers the checkpoint, so it alone chooses it
            point["validation_score"] = evaluate(evaluated, run["validation_set"], dev, workers=run["workers"])
            if best.offer(epoch, pruner.sparsity, point["validation_score"], model, pruner.masks):
                log.info("upstream %s epoch %d: kept (validation %.4f at sparsity %.4f)", method, epoch + 1,
                         point["validation_score"], pruner.sparsity)
        tracking.log_point(point)
        if world.distributed:
            check_same_on_every_rank(world, "masks", pruner.masks)
        save_state(work, world, dev, epoch=epoch + 1, epochs=epochs, model=model, optimizer=optimizer,
                   pruner=pruner, generators=run["generators"],
                   train_seconds=earlier_seconds + time.perf_counter() - start, losses=losses,
                   selection=best.state_dict() if best is not None and world.is_main else None)

    tracking.start(checkpoint_name(rec, method, sparsities[0], seed),
                   {"method": method, "sparsities": sparsities, "recipe": rec["name"], "arch": rec["arch"],
                    "dataset": rec["dataset"], "seed": seed, "knobs": knobs, "loop": options.to_dict(),
                    "world_size": world.size, "run_identity": identity}, folder)
    for epoch, loss in enumerate(losses):  # a resumed run's earlier epochs, so that a tracker sees the whole curve
        tracking.log_point({"epoch": epoch, "train_loss": loss})
    forward = Forward(run["net"], dev, options)
    train_loop(forward, optimizer, pruner, loader, rec, epochs, run["base_lr"],
               start_epoch=resumed.epoch if resumed else 0, schedule_epochs=run["context"].get("schedule_epochs"),
               end_of_epoch=end_of_epoch, desc=f"upstream {method}")
    seconds = earlier_seconds + time.perf_counter() - start
    model = revert_sync_batchnorm(model).float()  # checkpoints hold fp32 weights and plain BatchNorm
    training = {"run_identity": identity, "world_size": world.size, "loop": options.to_dict(),
                "loader_workers": run["workers"], "data_order": DATA_ORDER, "epoch_losses": losses,
                "resumed_from_epoch": resumed.epoch if resumed else 0}
    results = None
    if world.is_main:
        one_shot = pruner_name(method, knobs) in ("cram", "cram_nm")  # CrAM: one-shot candidates of the model
        results = _register(method, sparsities, rec, model, pruner, run, dev, seed, seconds, folder, training,
                            one_shot, best)
        tracking.summary.update(_tracked_summary(results))
    results = broadcast_object(world, results)
    discard_state(work, world)
    return results


def _tracked_summary(results: list[UpstreamResult]) -> dict[str, float]:
    """The final metrics a tracker shows: each checkpoint's upstream top-1 and measured sparsity (keyed by the
    checkpoint's name when the run made several: CrAM's candidates, LTH-T's tickets)."""
    return {f"{key}/{r.spec.name}" if len(results) > 1 else key: value
            for r in results for key, value in (("upstream_top1", r.top1), ("measured_sparsity", r.sparsity))}


def _build_run(method: str, sparsities: list[float], rec: dict, knobs: dict, recipe: str | Path,
               data_root: Path | None, seed: int, device: str, options: LoopOptions, world: World,
               dev: torch.device) -> dict[str, Any]:
    """Data, model (on its device, in its dtype and memory format), optimizer and the method's pruner."""
    torch.manual_seed(seed)
    data = upstream_data(rec, data_root)
    if data.multilabel:
        _check_multilabel_run(method, rec, knobs)
    train_set, test_set = data.train, data.test
    workers = options.loader_workers(dev, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    loader = train_batches(rec, train_set, data_root, world, seed, workers, dev, options.loader)
    fisher = FisherBatches(train_set, seed, workers, dev)
    model = create_model(rec["arch"], num_classes=data.outputs)
    if options.sync_bn and world.distributed:
        model = convert_sync_batchnorm(model, dev)
    model = model.to(dev, dtype=torch.float64 if options.precision == "fp64" else torch.float32)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    knobs = dict(knobs)
    opt_cfg = {**rec["optimizer"], **knobs.pop("optimizer", {})}
    base = make_optimizer(model.parameters(), opt_cfg)
    context = {"recipe": rec, "loader": loader, "device": dev, "seed": seed, "train_set": train_set,
               "base_lr": opt_cfg["lr"], "fisher_batches": fisher.source,
               "dense_model": (lambda: dense_upstream(rec, recipe, data_root, seed, device))}
    if knobs.pop("init", None) == "dense":  # start from the recipe's dense model (WoodFisher §2.3)
        from ..checkpoints import load_checkpoint

        own = model.state_dict()
        model.load_state_dict({k: v.to(dtype=own[k].dtype)
                               for k, v in load_checkpoint(context["dense_model"]()).model.state_dict().items()})
    try:
        # a run that yields several sparsities (LTH-T's tickets on the way) trains for the largest
        pruner, optimizer, epochs = build(method, model, base, max(sparsities), knobs, context)
    except (ValueError, TypeError) as exc:  # knobs that do not fit the method or the run length
        raise TransferbenchError(f"recipe {rec['name']}, method {method}: {exc}; fix the recipe's knobs") from None
    if len(sparsities) > 1 and getattr(pruner, "prune_at_start", True) is False:
        raise TransferbenchError(f"recipe {rec['name']}, method {method}: only LTH-T (rewinding to θ_p) gives "
                                 "several sparsities from one run; pass one --sparsity per command")
    if hasattr(pruner, "shard"):  # WoodFisher: each rank computes its share of the Fisher gradients
        pruner.shard = (world.rank, world.size)
    generators = {"fisher": fisher.generator}  # CrAM's draws are in its optimizer's state_dict
    net = model
    if world.distributed:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    return {"model": model, "net": net, "optimizer": optimizer, "pruner": pruner, "loader": loader,
            "epochs": epochs, "base_lr": opt_cfg["lr"], "context": context, "generators": generators,
            "train_set": train_set, "test_set": test_set, "validation_set": data.validation,
            "multilabel": data.multilabel, "workers": workers}


def _check_multilabel_run(method: str, rec: dict, knobs: dict) -> None:
    """One-line errors for what a multi-label run cannot do: a pruner defined for class indices only, label
    smoothing (a property of a softmax over classes)."""
    where = f"recipe {rec['name']}, method {method}"
    if pruner_name(method, knobs) in CLASS_INDEX_PRUNERS:
        raise TransferbenchError(f"{where}: {pruner_name(method, knobs)} needs class labels, but --dataset "
                                 f"{rec['dataset']} has one 0/1 target per attribute; use dense, magnitude, gmp, "
                                 "rigl, lth or acdc")
    if float(rec.get("label_smoothing") or 0.0) > 0:
        raise TransferbenchError(f"{where}: label_smoothing smooths a softmax over classes; --dataset "
                                 f"{rec['dataset']} trains one sigmoid per attribute: set label_smoothing: 0")


def _register(method: str, sparsities: list[float], rec: dict, model: nn.Module, pruner: Pruner, run: dict,
              dev: torch.device, seed: int, seconds: float, folder: Path, training: dict,
              one_shot: bool, best: BestCheckpoint | None = None) -> list[UpstreamResult]:
    """Rank 0: the checkpoint(s) of the trained model (CrAM: one-shot candidates), evaluated, written, registered.
    ``best``: the epoch chosen on validation data, registered instead of the last one."""
    candidates = [(sparsities[0], model, pruner.masks, {})]
    if best is not None and best.epoch is not None and not one_shot and len(sparsities) == 1:
        candidates = [(sparsities[0], model, best.restore(model), {"selection": best.metadata()})]
    if one_shot:
        candidates = one_shot_candidates(model, method, sparsities, rec, run["train_set"], dev, run["workers"])
    elif len(sparsities) > 1:  # LTH-T: the ticket of every requested sparsity's round, θ_p ⊙ m_r
        candidates = []
        for sp in sparsities:
            rounds = rounds_for_sparsity(sp, pruner.rate)
            ticket = copy.deepcopy(model)
            candidates.append((sp, ticket, pruner.ticket(rounds, ticket), {"lth_rounds": rounds}))
    return [register_candidate(folder, rec, method, sp, net, masks, run["test_set"], dev, seed, seconds,
                               {"training": training, **about}, workers=run["workers"], multilabel=run["multilabel"])
            for sp, net, masks, about in candidates]


def already_registered(rec: dict, method: str, sparsities: list[float], seed: int,
                       identity: str) -> list[UpstreamResult] | None:
    """The registered results of this very run (same names, files present, same run identity), or None."""
    results = []
    for sp in sparsities:
        spec = named_checkpoint(checkpoint_name(rec, method, sp, seed))
        try:
            path = local_path(spec) if spec is not None else None
        except TransferbenchError:  # registered, but the file is gone: train it again
            path = None
        if path is None:
            return None
        metadata = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("metadata", {})
        if metadata.get("training", {}).get("run_identity") != identity:
            return None
        results.append(UpstreamResult(path, spec, float(metadata["upstream_top1"]),
                                      float(metadata["measured_sparsity"])))
    return results


def dense_upstream(rec: dict, recipe: str | Path, data_root: Path | None, seed: int, device: str) -> Path:
    """The registered dense model of this recipe (trained on first use): LTH-T rewinds to it."""
    spec = named_checkpoint(checkpoint_name(rec, "dense", 0.0, seed))
    if spec is not None:
        return local_path(spec)
    return train_upstream("dense", [0.0], rec["arch"], rec["dataset"], recipe, data_root, seed, device)[0].path
