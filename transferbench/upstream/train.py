"""`transferbench upstream`: train/prune an upstream model with a method and register the checkpoint(s).

One loop serves every method and recipe: pruners are hooks (pruning/base.py), CrAM is an optimizer wrapper.
The result is written in the project's checkpoint format (checkpoints/save.py) and registered in the user's
local registry, so ``transferbench run --method M --sparsity S`` finds it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..checkpoints import checkpoint_dir
from ..context import resolve_device
from ..errors import TransferbenchError
from ..models import create_model
from ..progress import progress
from ..pruning.base import training_step
from ..pruning.factory import build
from .candidates import UpstreamResult, one_shot_candidates, register_candidate
from .data import upstream_datasets
from .recipes import checked_sparsities, checkpoint_name, lr_at, method_recipe

log = logging.getLogger("transferbench")


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
    sparsities = checked_sparsities(method, sparsities)
    rec, knobs = method_recipe(method, recipe, arch, dataset)
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
        from ..checkpoints import load_checkpoint

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
        candidates = one_shot_candidates(model, method, sparsities, rec, train_set, dev)
    folder = out_dir or checkpoint_dir() / "upstream"
    return [register_candidate(folder, rec, method, sp, net, masks, test_set, dev, seed, seconds, about)
            for sp, net, masks, about in candidates]


def dense_upstream(rec: dict, recipe: str | Path, data_root: Path | None, seed: int, device: str) -> Path:
    """The registered dense model of this recipe (trained on first use): LTH-T rewinds to it."""
    from ..checkpoints import list_checkpoints, local_path

    name = checkpoint_name(rec, "dense", 0.0, seed)
    for spec in reversed(list_checkpoints()):
        if spec.name == name:
            return local_path(spec)
    return train_upstream("dense", [0.0], rec["arch"], rec["dataset"], recipe, data_root, seed, device)[0].path
