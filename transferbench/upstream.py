"""`transferbench upstream`: train/prune an upstream model with a method and register the checkpoint(s).

One loop serves every method and recipe: pruners are hooks (pruning/base.py), CrAM is an optimizer wrapper.
The result is written in the project's checkpoint format (checkpoints/save.py) and registered in the user's
local registry, so ``transferbench run --method M --sparsity S`` finds it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset, Subset

from . import shipped, synthetic
from .checkpoints import CheckpointSpec, checkpoint_dir, lookup_checkpoint, register_local, save_checkpoint
from .checkpoints.resolve import resolve_checkpoint
from .context import resolve_device
from .errors import TransferbenchError
from .models import create_model
from .progress import progress
from .pruning.base import training_step
from .pruning.factory import METHODS, build
from .runspec import CheckpointRef
from .sparsity import measure_sparsity
from .tasks import IMAGENET_NORMALIZATION, Transformed
from .tasks.builtin import ArrayDataset
from .transforms import TransformConfig, build_transform
from .version import __version__
from .vocabulary import format_sparsity, normalize_sparsity

log = logging.getLogger("transferbench")


def load_recipe(recipe: str | Path) -> dict[str, Any]:
    """A shipped recipe by name (``small_cpu``, ``imagenet_resnet50``) or a YAML file."""
    return shipped.load("recipe", recipe, flag="--recipe")[0]


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


def lr_at(schedule: dict, epoch: float, base_lr: float, total_epochs: int) -> float:
    """The recipe's LR at a (fractional) epoch: cosine with linear warm-up (§0.5), or WoodFisher's step decay
    (constant until ``constant_until``, then × ``gamma`` every ``every`` epochs; §2.3)."""
    if schedule.get("kind", "cosine") == "step":  # decays at the END of epochs until, until+every, ..., last
        points = range(schedule["constant_until"], schedule.get("last", 10**9) + 1, schedule["every"])
        return base_lr * schedule["gamma"] ** sum(epoch >= k + 1 for k in points)
    warm = schedule.get("warmup_epochs", 0)
    if epoch < warm:  # §0.5: base·(e+1)/W for the integer epoch e
        return base_lr * (math.floor(epoch) + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(total_epochs - warm, 1))) * base_lr


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


@dataclass
class UpstreamResult:
    path: Path
    spec: CheckpointSpec
    top1: float
    sparsity: float


def train_loop(model, optimizer, pruner, loader: DataLoader, recipe: dict, epochs: int, device: torch.device,
               base_lr: float, schedule_epochs: int | None = None, desc: str = "upstream") -> int:
    """Ordinary SGD training with the pruner's hooks; returns the number of steps taken.

    The LR schedule spans ``schedule_epochs`` (default: the whole run) and restarts after each such period
    (IMP's per-round restart).
    """
    step = 0
    period = schedule_epochs or epochs
    smoothing = float(recipe.get("label_smoothing", 0.0))
    steps_per_epoch = len(loader)
    for epoch in progress(range(epochs), desc=desc, unit="epoch"):
        model.train()
        losses = []
        for i, (x, y) in enumerate(loader):
            lr = lr_at(recipe["schedule"], epoch % period + i / steps_per_epoch, base_lr, period)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = training_step(model, optimizer, pruner, x.to(device), y.to(device), step,
                                 loss_fn=lambda logits, target: F.cross_entropy(logits, target,
                                                                                label_smoothing=smoothing))
            if not torch.isfinite(loss):
                raise TransferbenchError(f"upstream loss became NaN at step {step}; lower the recipe's lr")
            losses.append(loss.item())
            step += 1
        log.info("%s epoch %d/%d loss=%.4f sparsity=%.4f", desc, epoch + 1, epochs, float(np.mean(losses)),
                 pruner.sparsity)
    pruner.finalize()
    return step


def train_upstream(method: str, sparsities: list[float], arch: str | None = None, dataset: str | None = None,
                   recipe: str | Path = "small_cpu", data_root: Path | None = None, seed: int = 0,
                   device: str = "auto", out_dir: Path | None = None) -> list[UpstreamResult]:
    """Train ``method`` with ``recipe`` and write + register one checkpoint per requested sparsity.

    Every method but CrAM takes exactly one sparsity. CrAM trains one dense model and produces one candidate per
    sparsity by one-shot pruning and BN recalibration (§6.3).
    """
    sparsities = _checked_sparsities(method, sparsities)
    rec, knobs = _method_recipe(method, recipe, arch, dataset)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    train_set, test_set = upstream_datasets(rec, data_root)
    num_classes = 16 if rec["dataset"] == "shapes" else 1000
    model = create_model(rec["arch"], num_classes=num_classes).to(dev)
    loader = DataLoader(train_set, batch_size=int(rec["batch_size"]), shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=True)
    opt_cfg = {**rec["optimizer"], **knobs.pop("optimizer", {})}
    base = torch.optim.SGD(model.parameters(), lr=opt_cfg["lr"], momentum=opt_cfg["momentum"],
                           weight_decay=opt_cfg["weight_decay"])
    start = time.perf_counter()
    context = {"recipe": rec, "loader": loader, "device": dev, "seed": seed, "train_set": train_set,
               "base_lr": opt_cfg["lr"], "dense_model": (lambda: dense_upstream(rec, recipe, data_root, seed, device))}
    if knobs.pop("init", None) == "dense":  # start from the recipe's dense model (WoodFisher §2.3)
        from .checkpoints import load_checkpoint

        model.load_state_dict(load_checkpoint(context["dense_model"]()).model.state_dict())
    try:
        pruner, optimizer, epochs = build(method, model, base, sparsities[0], knobs, context)
    except (ValueError, TypeError) as exc:  # knobs that do not fit the method or the run length
        raise TransferbenchError(f"recipe {rec['name']}, method {method}: {exc}; fix the recipe's knobs") from None
    train_loop(model, optimizer, pruner, loader, rec, epochs, dev, opt_cfg["lr"],
               schedule_epochs=context.get("schedule_epochs"), desc=f"upstream {method}")
    seconds = time.perf_counter() - start
    candidates = [(sparsities[0], model, pruner.masks, {})]
    if method in ("cram", "cram_nm"):
        candidates = _one_shot_candidates(model, method, sparsities, rec, train_set, dev)
    folder = out_dir or checkpoint_dir() / "upstream"
    return [_register_candidate(folder, rec, method, sp, net, masks, test_set, dev, seed, seconds, about)
            for sp, net, masks, about in candidates]


def _checked_sparsities(method: str, sparsities: list[float]) -> list[float]:
    """The requested sparsities as fractions, checked against what ``method`` can produce."""
    sparsities = [0.0] if method == "dense" and sparsities in ([0.9], [0.0]) else sparsities
    try:
        sparsities = [normalize_sparsity(sp) for sp in sparsities]
    except (ValueError, TransferbenchError) as exc:
        raise TransferbenchError(f"bad --sparsity {sparsities}: {exc}") from None
    if method == "dense" and sparsities != [0.0]:
        raise TransferbenchError("--method dense trains a dense model: drop --sparsity (or pass 0)")
    if method not in METHODS:
        raise TransferbenchError(f"unknown pruning method '{method}' (--method); choose one of: {', '.join(METHODS)}")
    if method == "cram_nm" and sparsities != [0.5]:
        raise TransferbenchError("cram_nm produces 2:4 models: pass --sparsity 0.5")
    if method != "cram" and len(sparsities) != 1:
        raise TransferbenchError(f"--sparsity takes one value for {method} (only cram accepts several)")
    return sparsities


def _method_recipe(method: str, recipe: str | Path, arch: str | None, dataset: str | None) -> tuple[dict, dict]:
    """(the recipe with the run's arch and dataset, the method's knobs); a method may bring its own schedule."""
    rec = load_recipe(recipe)
    if arch:
        rec["arch"] = arch
    if dataset:
        rec["dataset"] = dataset
    knobs = dict(rec["methods"].get(method, {}))
    rec["schedule"] = knobs.pop("schedule", rec["schedule"])  # WoodFisher's step schedule
    return rec, knobs


def _one_shot_candidates(model: torch.nn.Module, method: str, sparsities: list[float], rec: dict,
                         train_set: Dataset, dev: torch.device) -> list[tuple]:
    """CrAM's candidates: the trained model one-shot pruned to each sparsity (2:4 for cram_nm), BN recalibrated on
    a seeded class-balanced sample of the training set (§6.3: 1000 images, seed 42, training augmentation).
    Returns (sparsity, model, masks, calibration metadata) per candidate."""
    from .pruning.bn import balanced_sample, bn_recalibrate, dataset_labels, indices_digest
    from .pruning.oneshot import one_shot_prune

    calib = rec.get("calibration", {})
    seed = int(calib.get("seed", 42))
    indices = balanced_sample(dataset_labels(train_set), int(calib.get("size", 1000)), seed)
    calib_loader = DataLoader(Subset(train_set, indices), batch_size=int(calib.get("batch_size", 128)), shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    about = {"calibration": {"size": len(indices), "seed": seed, "batches": int(calib.get("batches", 20)),
                             "indices_sha256": indices_digest(indices), "sampling": "class-balanced"}}
    candidates = []
    for sp in sparsities:
        pruned = copy.deepcopy(model)
        masks = one_shot_prune(pruned, "2:4" if method == "cram_nm" else sp)
        bn_recalibrate(pruned, calib_loader, iters=int(calib.get("batches", 20)), device=dev)
        candidates.append((sp, pruned, masks, about))
    return candidates


def _register_candidate(folder: Path, rec: dict, method: str, sp: float, net: torch.nn.Module, masks: dict,
                        test_set: Dataset, dev: torch.device, seed: int, seconds: float,
                        about: dict | None = None) -> UpstreamResult:
    """Evaluate one trained (or one-shot) model, write it in the project's format and register it."""
    top1 = evaluate(net, test_set, dev)
    measured = measure_sparsity(net, include_head=True).overall
    name = _checkpoint_name(rec, method, sp, seed)
    path = folder / f"{name}.pth"
    metadata = {"method": method, "target_sparsity": float(sp), "measured_sparsity": measured,
                "recipe": rec["name"], "recipe_config": yaml.safe_dump(rec), "upstream_dataset": rec["dataset"],
                "upstream_top1": top1, "seed": seed, "train_seconds": seconds,
                "transferbench_version": __version__, **(about or {})}
    digest = save_checkpoint(path, net, masks, arch=rec["arch"], dataset=rec["dataset"], metadata=metadata)
    spec = register_local(CheckpointSpec(
        name=name, method=method, sparsity=float(sp), arch=rec["arch"], format="ist", filename=path.name,
        sha256=digest, upstream_top1=round(100 * top1, 2),
        notes=f"trained by transferbench upstream ({rec['name']} recipe, {rec['dataset']}, seed {seed})"), path)
    log.info("upstream %s %s: top1=%.4f sparsity=%.4f → %s", method, format_sparsity(sp), top1, measured, path)
    return UpstreamResult(path, spec, top1, measured)


def dense_upstream(rec: dict, recipe: str | Path, data_root: Path | None, seed: int, device: str) -> Path:
    """The registered dense model of this recipe (trained on first use): LTH-T rewinds to it."""
    from .checkpoints import list_checkpoints, local_path

    name = _checkpoint_name(rec, "dense", 0.0, seed)
    for spec in reversed(list_checkpoints()):
        if spec.name == name:
            return local_path(spec)
    return train_upstream("dense", [0.0], rec["arch"], rec["dataset"], recipe, data_root, seed, device)[0].path


def _checkpoint_name(rec: dict, method: str, sparsity: float, seed: int) -> str:
    return f"{rec['arch']}_{method}_{format_sparsity(sparsity).rstrip('%')}_{rec['name']}_s{seed}"


MINI_ARCH, MINI_RECIPE, MINI_DEFAULT_SPARSITY = "resnet_tiny", "small_cpu", 0.9
ONE_MODEL_MANY_SPARSITIES = ("cram",)  # train_upstream makes one candidate per sparsity from one trained model


def mini_checkpoint_missing(method: str, sparsity: float | None, arch: str | None = None) -> bool:
    """Whether the mini-suite upstream model of ``method`` is not registered yet (and ``upstream`` can train it)."""
    sparsity = _mini_sparsity(method, sparsity)
    return method in METHODS and lookup_checkpoint(method, sparsity, arch or MINI_ARCH) is None


def ensure_mini_checkpoint(method: str, sparsity: float | None, arch: str | None = None) -> CheckpointRef:
    """For the offline mini-tasks: the registered upstream model of ``method``, trained now (small_cpu recipe,
    seconds to minutes on a CPU) when there is none yet. An explicit stage: planning never calls this."""
    arch, sparsity = arch or MINI_ARCH, _mini_sparsity(method, sparsity)
    train_mini_checkpoints(method, [sparsity], arch)
    return resolve_checkpoint(method, sparsity, arch, None)


def train_mini_checkpoints(method: str, sparsities: list[float], arch: str = MINI_ARCH) -> list[float]:
    """Train and register the mini-suite models of ``method`` at those of ``sparsities`` that are missing; returns
    them. CrAM makes every candidate from one model (one-shot pruning + BN recalibration), so its sparsities are
    trained together, the first being the one CrAM trains for."""
    missing = [s for s in sparsities if mini_checkpoint_missing(method, s, arch)]
    batches = [missing] if method in ONE_MODEL_MANY_SPARSITIES and missing else [[s] for s in missing]
    for batch in batches:
        log.info("no %s upstream model at %s for %s yet: training one with the %s recipe (cached for later runs)",
                 method, ", ".join(format_sparsity(s) for s in batch), arch, MINI_RECIPE)
        train_upstream(method, batch, arch=arch, recipe=MINI_RECIPE)
    return missing


def _mini_sparsity(method: str, sparsity: float | None) -> float:
    if sparsity is None:
        return 0.0 if method == "dense" else MINI_DEFAULT_SPARSITY
    return normalize_sparsity(sparsity)
