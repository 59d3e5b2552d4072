"""What an upstream run ends with: one-shot candidates (CrAM), evaluation, the checkpoint file and its registry row."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import CheckpointSpec, register_local, save_checkpoint
from ..names import check_name, inside
from ..pruning.bn import balanced_sample, bn_recalibrate, dataset_labels, indices_digest
from ..pruning.oneshot import one_shot_prune
from ..pruning.posttraining import prune_one_shot
from ..seeding import epoch_seed
from ..sparsity import measure_sparsity, set_weights
from ..sparsity_rules import sparsity_rule
from ..version import __version__
from ..vocabulary import format_sparsity
from .chance import at_chance, chance_note, chance_threshold
from .data import SeededSamples, eval_loader
from .recipes import checkpoint_name

log = logging.getLogger("transferbench")


@dataclass
class UpstreamResult:
    path: Path
    spec: CheckpointSpec
    top1: float | None  # None: a one-shot candidate calibrated on a downstream task, not scored on upstream data
    sparsity: float


def head_classes(net: torch.nn.Module) -> int:
    """The number of classes ``net`` predicts: the width of its last linear layer."""
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256,
             workers: int = 0) -> float:
    """Top-1 on ``dataset`` (read by ``workers`` loader processes, pinned on a GPU); for multi-label targets (0/1
    rows [K]) the mean attribute accuracy, a logit above 0 predicting 1 (over N·K decisions, which is the mean of
    the K attributes' accuracies, each attribute having every image)."""
    model.eval()
    correct = total = 0
    for x, y in eval_loader(dataset, batch_size, workers, device):
        logits = model(x.to(device, non_blocking=True)).cpu()
        hits = (logits > 0) == (y > 0.5) if y.ndim == 2 else logits.argmax(1) == y
        correct += int(hits.sum())
        total += hits.numel()
    return correct / max(total, 1)


# CrAM's BN tuning (§6.3, §6.5): 100 forward passes of batches of 128 over 1000 random training images, seed 42;
# what a recipe without a `calibration:` block gets.
CALIBRATION_DEFAULTS = {"size": 1000, "seed": 42, "batches": 100, "batch_size": 128}
# The one-shot pruning each method's candidates get (§6.3): global magnitude at the sparsity, or a fixed N:M pattern.
ONE_SHOT_PATTERN = {"cram_nm": "2:4"}
# One-shot post-training pruners from calibration data (pruning.posttraining): method -> (pruner, N:M pattern)
# (one-shot magnitude is named oneshot_magnitude: "magnitude" is the gradual magnitude pruning of the registry)
POSTTRAINING = {"oneshot_magnitude": ("magnitude", None), "oneshot_magnitude_nm": ("magnitude", (2, 4)),
                "wanda": ("wanda", None), "wanda_nm": ("wanda", (2, 4)), "sparsegpt": ("sparsegpt", None),
                "sparsegpt_nm": ("sparsegpt", (2, 4))}


def calibration_settings(rec: dict) -> dict:
    """The recipe's ``calibration:`` block (size, seed, batches, batch_size) over ``CALIBRATION_DEFAULTS``."""
    return {**CALIBRATION_DEFAULTS, **(rec.get("calibration") or {})}


def calibration_seed(rec: dict) -> int:
    """The seed the recipe's calibration sample is drawn with (part of its candidates' names)."""
    return int(calibration_settings(rec)["seed"])


@dataclass(frozen=True)
class Calibration:
    """The BN recalibration of one-shot candidates: ``batches`` train-mode passes of ``batch_size`` images over a
    seeded class-balanced sample of the training set (its training augmentation included, as CrAM's ``--use_calib``).

    Every candidate is recalibrated from the same seeds (sample order and augmentation), so a candidate depends on
    its model and this sample only, not on which other sparsities were prepared with it.
    """

    dataset: Dataset
    indices: tuple[int, ...]
    seed: int
    batches: int
    batch_size: int

    @classmethod
    def from_recipe(cls, rec: dict, train_set: Dataset) -> Calibration:
        """The sample the recipe's ``calibration:`` block (size, seed, batches, batch_size) asks for."""
        calib, seed = calibration_settings(rec), calibration_seed(rec)
        indices = balanced_sample(dataset_labels(train_set), int(calib["size"]), seed)
        return cls(train_set, tuple(indices), seed, int(calib["batches"]), int(calib["batch_size"]))

    def metadata(self) -> dict:
        # the batch size is the recipe's (recorded with it in the checkpoint's recipe_config)
        return {"size": len(self.indices), "seed": self.seed, "batches": self.batches,
                "indices_sha256": indices_digest(self.indices), "sampling": "class-balanced"}

    def batches_of_samples(self) -> list[list[tuple[int, int]]]:
        """The ``batches`` batches of (index, augmentation seed): passes over the sample, each in its own seeded
        order (the last batch of a pass may be short, as a DataLoader's), until there are enough."""
        per_pass = math.ceil(len(self.indices) / self.batch_size)
        if per_pass == 0:
            raise ValueError("the calibration sample is empty")
        generator, out = torch.Generator().manual_seed(self.seed), []
        for n in range(math.ceil(self.batches / per_pass)):
            seed = epoch_seed(self.seed, n)
            order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=generator).tolist()]
            out += [[(i, seed) for i in order[k:k + self.batch_size]] for k in range(0, len(order), self.batch_size)]
        return out[:self.batches]

    def image_batches(self, device: torch.device) -> list[torch.Tensor]:
        """One pass over the sample in batches of ``batch_size`` (the first pass of ``batches_of_samples``, with
        its seeded augmentation): the calibration inputs of Wanda and SparseGPT."""
        per_pass = math.ceil(len(self.indices) / self.batch_size)
        first = self.batches_of_samples() if self.batches >= per_pass else \
            replace(self, batches=per_pass).batches_of_samples()
        loader = DataLoader(SeededSamples(self.dataset), batch_sampler=first[:per_pass], num_workers=0)
        return [x.to(device) for x, _ in loader]

    def recalibrate(self, model: torch.nn.Module, device: torch.device, workers: int = 0) -> None:
        """Recalibrate ``model``'s BN in place; ``workers`` loader processes never change the result (each image's
        augmentation is seeded by its index and pass)."""
        loader = DataLoader(SeededSamples(self.dataset), batch_sampler=self.batches_of_samples(),
                            num_workers=workers, pin_memory=device.type == "cuda")
        bn_recalibrate(model, loader, iters=self.batches, device=device)


def one_shot_candidate(model: torch.nn.Module, method: str, sparsity: float, calibration: Calibration,
                       device: torch.device, workers: int = 0, arch: str | None = None) -> tuple[torch.nn.Module, dict]:
    """A copy of the dense ``model`` (an ``arch``) pruned one-shot to ``sparsity`` (2:4 for cram_nm) with its BN
    recalibrated; returns (the copy, its masks). ``model`` itself is left as it was. The post-training pruners prune
    the method's prunable set for the architecture (the rule table: a CNN's convs and linears but the stem and the
    head, a vision transformer's blocks), as the registry gate and the sparsity reports read it."""
    pruned = copy.deepcopy(model)
    if method in POSTTRAINING:
        pruner, nm = POSTTRAINING[method]
        modules = dict(pruned.named_modules())
        layers = {name[:-len(".weight")]: modules[name[:-len(".weight")]]
                  for name in set_weights(pruned, sparsity_rule(method, arch=arch).prunable)}
        masks, report = prune_one_shot(pruned, pruner, calibration.image_batches(device),
                                       sparsity=None if nm else sparsity, nm=nm, layers=layers)
        for layer in report:
            log.debug("%s %s: %s, density %.3f, reconstruction error %.4g", method, layer.name, layer.method,
                      layer.density, layer.error)
    else:
        masks = one_shot_prune(pruned, ONE_SHOT_PATTERN.get(method, sparsity))
    calibration.recalibrate(pruned, device, workers)
    return pruned, masks


def oneshot_metadata(method: str, calibration: Calibration) -> dict:
    """What a one-shot candidate's checkpoint records about how it was made."""
    pruning = ONE_SHOT_PATTERN.get(method, "global magnitude")
    if method in POSTTRAINING:
        pruner, nm = POSTTRAINING[method]
        pattern = f"{nm[0]}:{nm[1]}" if nm else "unstructured, every layer at the sparsity"
        how = "|W| alone, the sample only recalibrates BN" if pruner == "magnitude" else \
            "layers calibrated in forward order on the sample"
        pruning = f"{pruner} ({pattern}; stem and head dense; {how})"
    return {"oneshot": True, "oneshot_pruning": pruning, "calibration": calibration.metadata()}


def one_shot_candidates(model: torch.nn.Module, method: str, sparsities: list[float], rec: dict,
                        train_set: Dataset, dev: torch.device, workers: int = 0) -> list[tuple]:
    """CrAM's candidates: the trained model one-shot pruned to each sparsity (2:4 for cram_nm), BN recalibrated on
    a seeded class-balanced sample of the training set (§6.3: 1000 images, seed 42, training augmentation).
    Returns (sparsity, model, masks, metadata) per candidate."""
    calibration = Calibration.from_recipe(rec, train_set)
    about = oneshot_metadata(method, calibration)
    return [(sp, *one_shot_candidate(model, method, sp, calibration, dev, workers), about) for sp in sparsities]


def register_candidate(folder: Path, rec: dict, method: str, sp: float, net: torch.nn.Module, masks: dict,
                       test_set: Dataset, dev: torch.device, seed: int, seconds: float,
                       about: dict | None = None, *, name: str | None = None, notes: str | None = None,
                       pruned_from: str | None = None, workers: int = 0, multilabel: bool = False) -> UpstreamResult:
    """Evaluate one trained (or one-shot) model, write it in the project's format and register it (as ``name``,
    default the recipe's checkpoint name; ``pruned_from``: the dense file a one-shot candidate was pruned from).
    ``multilabel``: its head has one sigmoid output per attribute; its upstream_top1 is the mean attribute
    accuracy, whose chance level is that of one binary decision."""
    # no test set: a candidate calibrated on a downstream task's images has no upstream data to be scored on here
    top1 = evaluate(net, test_set, dev, workers=workers) if test_set is not None else None
    measured = measure_sparsity(net, include_head=True).overall
    name = name or checkpoint_name(rec, method, sp, seed)
    notes = notes or f"trained by transferbench upstream ({rec['name']} recipe, {rec['dataset']}, seed {seed})"
    classes, test_size = (2 if multilabel else head_classes(net)), len(test_set) if test_set is not None else 0
    chance = top1 is not None and at_chance(top1, classes, test_size)
    if chance:
        notes = f"{notes}; {chance_note(method, top1, classes, test_size)}"
    path = inside(folder, folder / f"{check_name(name, 'upstream checkpoint name')}.pth", "upstream folder (--out)")
    metadata = {"method": method, "target_sparsity": float(sp), "measured_sparsity": measured,
                "recipe": rec["name"], "recipe_config": yaml.safe_dump(rec), "upstream_dataset": rec["dataset"],
                "upstream_top1": top1, "at_chance": chance,
                "chance_threshold": chance_threshold(classes, test_size) if test_size else None,
                "upstream_test_size": test_size, "seed": seed, "train_seconds": seconds,
                "transferbench_version": __version__,
                **({"upstream_metric": "mean attribute accuracy"} if multilabel else {}), **(about or {})}
    digest = save_checkpoint(path, net, masks, arch=rec["arch"], dataset=rec["dataset"], metadata=metadata)
    spec = register_local(CheckpointSpec(
        name=name, method=method, sparsity=float(sp), arch=rec["arch"], format="ist", filename=path.name,
        sha256=digest, upstream_top1=round(100 * top1, 2) if top1 is not None else None, pruned_from=pruned_from,
        at_chance=chance, trained_for=rec["dataset"] if multilabel else None,
        notes=notes), path)
    log.info("upstream %s %s: top1=%s sparsity=%.4f → %s", method, format_sparsity(sp),
             "n/a" if top1 is None else f"{top1:.4f}", measured, path)
    if chance:
        log.warning("upstream %s %s: %s", method, format_sparsity(sp), chance_note(method, top1, classes, test_size))
    return UpstreamResult(path, spec, top1, measured)
