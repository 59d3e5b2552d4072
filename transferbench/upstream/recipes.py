"""Upstream recipes: the shipped YAML (or a user's file), one method's run resolved from it (its own batch, LR and
schedule, stretched or scaled to another batch as the recipe's rule says), the LR schedule, checkpoint names."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from .. import shipped
from ..bounds import Bounds, OutOfBounds
from ..errors import TransferbenchError
from ..names import check_name
from ..pruning.factory import METHODS, RUN_KEYS, at_sparsity, pruner_name
from ..vocabulary import format_sparsity, method_matches, normalize_sparsity, resolve_method
from .optimizers import OPTIMIZER_KINDS, OPTIMIZER_SETTINGS, optimizer_kind

SCHEDULE_KINDS = ("cosine", "step", "multistep", "constant")
SCALING_RULES = ("linear_lr", "same_lr")

# The schema of a resolved run's values (the validator of transferbench.bounds, as for a transfer run's HParams)
_COUNT = Bounds(int, low=1)
_POSITIVE = Bounds(float, low=0, low_open=True)
_NON_NEGATIVE = Bounds(float, low=0)
RUN_BOUNDS = {"epochs": _COUNT, "batch_size": _COUNT, "label_smoothing": Bounds(float, low=0, high=1, high_open=True)}
OPTIMIZER_BOUNDS = {"kind": Bounds(str, choices=OPTIMIZER_KINDS), "lr": _POSITIVE, "momentum": _NON_NEGATIVE,
                    "weight_decay": _NON_NEGATIVE, "nesterov": Bounds(bool)}
SCHEDULE_BOUNDS = {"per": Bounds(str, choices=("epoch", "step")), "warmup_epochs": _NON_NEGATIVE,
                   "constant_until": Bounds(int, low=0), "every": _COUNT, "last": Bounds(int, low=0),
                   "gamma": _POSITIVE, "milestones": Bounds(tuple, item=_NON_NEGATIVE)}


def load_recipe(recipe: str | Path) -> dict[str, Any]:
    """A shipped recipe by name (``small_cpu``, ``imagenet_resnet50``) or a YAML file."""
    return shipped.load("recipe", recipe, flag="--recipe")[0]


def lr_at(schedule: dict, epoch: float, base_lr: float, total_epochs: int) -> float:
    """The recipe's LR at a (fractional) epoch.

    - ``cosine``: linear warm-up ``base·(e+1)/W`` for the integer epoch e < W, then half a cosine to 0 at
      ``total_epochs`` (§0.5); ``per: epoch`` holds the cosine part constant within an epoch, as STR's and
      IST-DASLab's CosineLR (stepped once per epoch), else it moves every step.
    - ``step``: WoodFisher's decay (§2.3): constant until ``constant_until``, then × ``gamma`` at the END of epochs
      ``constant_until``, ``+every``, … up to ``last``.
    - ``multistep``: RigL's TF schedule (§3.3): ``base·epoch/W`` over the warm-up, continuous in the fractional
      epoch (0 at the first step), then ``base·gamma^k`` after the k-th of ``milestones``.
    - ``constant``: ``base`` throughout (the CelebA study's post-training GMP: Adam with a MultiStepLR whose only
      milestone, 100, falls after its 80 epochs).
    """
    kind = schedule.get("kind", "cosine")
    if kind == "constant":
        return base_lr
    if kind == "step":
        points = range(schedule["constant_until"], schedule.get("last", 10**9) + 1, schedule["every"])
        return base_lr * schedule["gamma"] ** sum(epoch >= k + 1 for k in points)
    warm = schedule.get("warmup_epochs", 0)
    if kind == "multistep":
        if epoch < warm:
            return base_lr * epoch / warm
        return base_lr * schedule.get("gamma", 0.1) ** sum(epoch >= m for m in schedule["milestones"])
    if epoch < warm:  # §0.5: base·(e+1)/W for the integer epoch e
        return base_lr * (math.floor(epoch) + 1) / warm
    at = math.floor(epoch) if schedule.get("per") == "epoch" else epoch
    return 0.5 * (1 + math.cos(math.pi * (at - warm) / max(total_epochs - warm, 1))) * base_lr


# Methods one run of which yields several sparsities: CrAM (one-shot candidates of one model) and LTH-T (IMP passes
# every sparsity of the 20% grid on its way to the largest one; each ticket is θ_p ⊙ m of its round).
SEVERAL_SPARSITIES = ("cram", "lth", "wanda", "sparsegpt")  # one model (or one dense file) makes each


def checked_sparsities(method: str, sparsities: list[float]) -> list[float]:
    """The requested sparsities as fractions, checked against what ``method`` can produce (whether the recipe has
    the method is ``method_recipe``'s check)."""
    sparsities = [0.0] if method == "dense" and sparsities in ([0.9], [0.0]) else sparsities
    try:
        sparsities = [normalize_sparsity(sp) for sp in sparsities]
    except (ValueError, TransferbenchError) as exc:
        raise TransferbenchError(f"bad --sparsity {sparsities}: {exc}") from None
    if method == "dense" and sparsities != [0.0]:
        raise TransferbenchError("--method dense trains a dense model: drop --sparsity (or pass 0)")
    if method.endswith("_nm") and sparsities != [0.5]:
        raise TransferbenchError(f"{method} produces 2:4 models: pass --sparsity 0.5")
    if method not in SEVERAL_SPARSITIES and len(sparsities) != 1:
        raise TransferbenchError(f"--sparsity takes one value for {method} (only {' and '.join(SEVERAL_SPARSITIES)} "
                                 "make several from one run)")
    return sparsities


def recipe_method(method: str, recipe: str | Path) -> str:
    """The entry of ``recipe`` that ``method`` names, as every command resolves a method name
    (vocabulary.resolve_method): itself, else its alias (``lth_t`` → ``lth``); several is a one-line choice."""
    rec = load_recipe(recipe)
    entries = list(rec.get("methods") or {})
    if not method_matches(method, entries):
        raise TransferbenchError(f"recipe {rec['name']} has no method '{method}' (--method); choose one of: "
                                 f"{', '.join(entries)}")
    return resolve_method(method, entries, where=f" in recipe {rec['name']}")


def method_recipe(method: str, recipe: str | Path, arch: str | None = None, dataset: str | None = None,
                  batch_size: int | None = None, sparsity: float | None = None) -> tuple[dict, dict]:
    """(the run's recipe, the method's pruner knobs) for recipe entry ``method``.

    The entry's run keys (``RUN_KEYS``: its epochs, batch, label smoothing, optimizer, LR schedule, scaling rule)
    replace the recipe's (the optimizer and the scaling rule are merged over them); ``sparsity`` applies the
    entry's ``by_sparsity`` overrides (else ``pruning.factory.build`` applies those of the pruner);
    ``training_steps_multiplier`` stretches the run (``stretch_recipe``); ``batch_size`` runs it at another global
    batch (``scale_recipe``).
    The returned recipe is what the run does: ``methods`` holds only this entry (as resolved), so the checkpoint's
    ``recipe_config`` records it, with ``scaled`` when the batch was changed.
    """
    rec = load_recipe(recipe)
    if arch:
        rec["arch"] = arch
    if dataset:
        rec["dataset"] = dataset
    entries = rec.get("methods") or {}
    if method not in entries:
        raise TransferbenchError(f"recipe {rec['name']} has no method '{method}' (--method); choose one of: "
                                 f"{', '.join(entries)}")
    entry = copy.deepcopy(entries[method] or {})  # YAML aliases (rigl: *rigl_erk1x) share their objects
    if sparsity is not None:
        entry = at_sparsity(entry, sparsity)[0]
    if pruner_name(method, entry) not in METHODS:
        raise TransferbenchError(f"recipe {rec['name']}, method {method}: unknown pruner "
                                 f"'{pruner_name(method, entry)}'; choose one of: {', '.join(METHODS)}")
    rec["methods"] = {method: copy.deepcopy(entry)}
    for key in RUN_KEYS:
        if key in entry:
            value = entry.pop(key)
            rec[key] = {**(rec.get(key) or {}), **value} if _merged(key, rec.get(key), value) else value
    multiplier = entry.pop("training_steps_multiplier", 1)
    if multiplier != 1:
        stretch_recipe(rec, multiplier, method)
    _check_run(rec, method)
    if batch_size is not None:
        scale_recipe(rec, entry, batch_size, method)
    return rec, entry


def _merged(key: str, top_level: dict | None, entry_value: Any) -> bool:
    """Whether an entry's ``key`` section is merged over the recipe's: the scaling rule always, the optimizer when
    it is of the same kind (an Adam entry in an SGD recipe replaces it: SGD's momentum means nothing to Adam)."""
    if key == "scaling":
        return True
    return key == "optimizer" and isinstance(entry_value, dict) and \
        optimizer_kind(entry_value) == optimizer_kind(top_level)


def stretch_recipe(rec: dict, multiplier: float, method: str = "") -> None:
    """RigL's ``--training_steps_multiplier`` (§3.3, ERK 5x): the epochs and every epoch of the LR schedule (its
    warm-up included) × ``multiplier``. Knobs given as fractions of the run (T_end) follow by themselves; ΔT, in
    steps, is not scaled, as in RigL's code."""
    multiplier = _POSITIVE.check(multiplier, "training_steps_multiplier", f"recipe {rec['name']}, method {method}: ")

    def stretched(epochs: float) -> float:
        value = epochs * multiplier
        return int(value) if float(value).is_integer() else value

    rec["epochs"] = stretched(rec["epochs"])
    schedule = dict(rec["schedule"])
    for key in ("warmup_epochs", "constant_until", "every", "last"):
        if key in schedule:
            schedule[key] = stretched(schedule[key])
    if "milestones" in schedule:
        schedule["milestones"] = [stretched(m) for m in schedule["milestones"]]
    rec["schedule"] = schedule


def scale_recipe(rec: dict, knobs: dict, batch_size: int, method: str = "") -> None:
    """Run ``rec`` (a resolved run recipe, whose ``batch_size`` is the batch its numbers are for: the published one
    in the shipped recipes) at global batch ``batch_size``, by its ``scaling`` rule, and record what changed in
    ``rec["scaled"]``.

    ``linear_lr`` multiplies the lr by ``batch_size / batch`` (Goyal et al.; NVIDIA's recipe, RigL's code and CrAM's
    configs); ``same_lr`` keeps it (WoodFisher/IST's runs used one lr at batch 180 and 256). Every knob named in
    ``scaling.step_knobs`` counts optimizer steps and is multiplied by ``batch / batch_size`` (RigL's ΔT: 100 at 4096
    is 400 at 1024), which must come out whole. Epochs, warm-up, LR schedules and knobs given as fractions of the
    run are left as they are.
    """
    flag = f"--batch-size {batch_size}"
    try:
        batch_size = _COUNT.coerce(batch_size)
    except OutOfBounds:
        raise TransferbenchError(f"{flag}: give the global batch, a whole number of images per step (1 or more)") \
            from None
    source = int(rec["batch_size"])
    if batch_size == source:
        return
    scaling = rec.get("scaling") or {}
    rule = scaling.get("rule")
    where = f"recipe {rec['name']}" + (f", method {method}" if method else "")
    if rule not in SCALING_RULES:
        raise TransferbenchError(f"{flag}: {where} has no scaling rule for another batch (scaling.rule is {rule!r}); "
                                 f"set one of {', '.join(SCALING_RULES)} in the recipe, or drop --batch-size")
    steps = {}
    for key in scaling.get("step_knobs") or ():
        if key in knobs:
            steps[key] = {"from": knobs[key], "to": _steps_at(knobs[key], source, batch_size, key, flag, where)}
    lr_factor = batch_size / source if rule == "linear_lr" else 1.0
    lr = float(rec["optimizer"]["lr"])
    rec["optimizer"] = {**rec["optimizer"], "lr": lr * lr_factor}
    rec["batch_size"] = batch_size
    for key, change in steps.items():
        knobs[key] = change["to"]
    rec["scaled"] = {"rule": rule, "from_batch": source, "to_batch": batch_size, "lr_factor": lr_factor,
                     "lr": {"from": lr, "to": lr * lr_factor}, **({"step_knobs": steps} if steps else {})}


def _steps_at(steps: int, source: int, batch_size: int, key: str, flag: str, where: str) -> int:
    """``steps`` optimizer steps at batch ``source`` as steps at ``batch_size`` (the same number of images)."""
    images = int(steps) * source
    if images % batch_size:
        lower = next(b for b in range(batch_size, 0, -1) if images % b == 0)
        higher = next(b for b in range(batch_size, images + 1) if images % b == 0)
        raise TransferbenchError(
            f"{flag}: {where} counts {key} in steps ({steps} at batch {source}), which would be "
            f"{images / batch_size:.4g} steps at batch {batch_size}; pass a batch that divides {images} "
            f"(nearest: {lower} or {higher})")
    return images // batch_size


def _check_run(rec: dict, method: str) -> None:
    """One-line errors for a run the loop could not follow: a bad batch, epoch count, optimizer or LR schedule,
    each value checked against its schema (``RUN_BOUNDS``, ``OPTIMIZER_BOUNDS``, ``SCHEDULE_BOUNDS``)."""
    where = f"recipe {rec['name']}, method {method}"
    for key in ("epochs", "batch_size"):
        if key not in rec:
            raise TransferbenchError(f"{where}: {key} is missing; give {RUN_BOUNDS[key]}")
    rec.update(_checked({k: rec[k] for k in RUN_BOUNDS if k in rec}, RUN_BOUNDS, f"{where}: ", ""))
    schedule = rec.get("schedule") or {}
    kind = schedule.get("kind", "cosine")
    needs = {"cosine": (), "step": ("constant_until", "every", "gamma"), "multistep": ("milestones",),
             "constant": ()}
    if kind not in SCHEDULE_KINDS:
        raise TransferbenchError(f"{where}: unknown schedule kind {kind!r}; choose one of: {', '.join(SCHEDULE_KINDS)}")
    missing = [key for key in needs[kind] if key not in schedule]
    if missing:
        raise TransferbenchError(f"{where}: a {kind} schedule needs {', '.join(missing)}")
    if "schedule" in rec:
        rec["schedule"] = _checked(schedule, SCHEDULE_BOUNDS, f"{where}: ", "schedule ")
    if "lr" not in (rec.get("optimizer") or {}):
        raise TransferbenchError(f"{where}: the optimizer has no lr")
    rec["optimizer"] = _checked(rec["optimizer"], OPTIMIZER_BOUNDS, f"{where}: ", "optimizer ")
    kind = optimizer_kind(rec["optimizer"])
    foreign = sorted(set(rec["optimizer"]) - {"kind", "lr", *OPTIMIZER_SETTINGS[kind]})
    if foreign:
        raise TransferbenchError(f"{where}: the {kind} optimizer has no {', '.join(foreign)}; it takes lr and "
                                 f"{', '.join(OPTIMIZER_SETTINGS[kind])}")


def _checked(section: dict, bounds: dict[str, Bounds], where: str, prefix: str) -> dict:
    """``section`` (a copy) with each key of ``bounds`` it has checked. A value given as text (YAML reads ``5e-4``
    as a string) or as a whole float where an integer is due is replaced by its value; the rest stay as written,
    since the recipe is part of an upstream run's identity (``upstream.state.run_identity``)."""
    out = dict(section)
    for key, bound in bounds.items():
        if key in section:
            value = bound.check(section[key], f"{prefix}{key}", where)
            given = section[key]
            if (isinstance(given, str) and bound.kind is not str) or (bound.kind is int and not isinstance(given, int)):
                out[key] = list(value) if isinstance(value, tuple) else value  # as YAML and JSON write it
    return out


def checkpoint_name(rec: dict, method: str, sparsity: float, seed: int) -> str:
    """``<arch>_<method>_<percent>_<recipe name>_s<seed>``: the registry name of a checkpoint trained here and its
    file's name under the upstream folder, so a name (``names.check_name``: a recipe's name, arch or method entry
    with a ``/`` would put the file elsewhere)."""
    name = f"{rec['arch']}_{method}_{format_sparsity(sparsity).rstrip('%')}_{rec['name']}_s{seed}"
    return check_name(name, f"recipe {rec['name']!r}: the checkpoint name (<arch>_<method>_<percent>_<recipe "
                            "name>_s<seed>)")
