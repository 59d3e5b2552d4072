"""The upstream entries of a sweep: checkpoints the sweep trains (or prepares) in a stage before its transfer jobs.

    upstream:
      - method: acdc
        sparsity: [80%, 90%, 95%]         # one job per sparsity (CrAM: one job makes every candidate of one model)
        seed: [0, 1]                   # default 0
        recipe: imagenet_resnet50      # default small_cpu; a list trains each; a path names a recipe .yaml
        dataset: imagenet              # default: the recipe's
        data_root: /imagenet           # the upstream dataset's folder (train/ and val/)
        arch: resnet50                 # default: the recipe's
        gpus: 8                        # the SLURM job's size (default: the profile's upstream: section)
        nodes: 2
        batch_size: 1024               # the global batch, the recipe scaled by its rule (default: the recipe's)
        precision: bf16                # loop switches, as the upstream command's flags: precision, channels_last,
        channels_last: true            # sync_bn, loader, workers
      - {method: cram, from: cram_resnet50, sparsity: [50%, 70%, 90%], dataset: imagenet, data_root: /imagenet}

A unit registers one checkpoint per sparsity, named ``checkpoint_name(recipe, method, sparsity, seed)``. A
transfer checkpoint of the sweep with the same method, sparsity and arch uses it (the ``seed:`` or ``recipe:``
of the checkpoint entry chooses between several); without ``checkpoints:`` the sweep transfers every one.
``from: NAME`` prepares one-shot candidates of a published dense model (CrAM) instead of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bounds import SEED
from ..checkpoints import checkpoint_dir
from ..checkpoints.registry import named_checkpoint
from ..errors import TransferbenchError
from ..upstream.candidates import calibration_seed
from ..upstream.from_dense import DEFAULT_RECIPES, ONE_SHOT_METHODS, oneshot_name, oneshot_names
from ..upstream.mini import MINI_RECIPE, ONE_MODEL_MANY_SPARSITIES
from ..upstream.options import LoopOptions
from ..upstream.recipes import checked_sparsities, checkpoint_name, load_recipe, method_recipe, recipe_method
from ..vocabulary import format_sparsity

LOOP_KEYS = ("precision", "channels_last", "sync_bn", "loader", "workers")  # upstream.options.LoopOptions
UPSTREAM_ENTRY_KEYS = ("method", "sparsity", "seed", "recipe", "arch", "dataset", "data_root", "from", "nodes", "gpus",
                       "batch_size", *LOOP_KEYS)


@dataclass(frozen=True)
class UpstreamUnit:
    """What one upstream job makes: ``method`` at ``sparsities`` with one recipe and seed (several sparsities
    only where one model gives them all), registered as ``products`` (one checkpoint name per sparsity)."""

    method: str
    sparsities: tuple[float, ...]
    arch: str
    dataset: str
    recipe: str
    recipe_name: str
    products: tuple[str, ...]
    seed: int = 0
    data_root: str | None = None
    source: str | None = None  # `from:` a dense model to prune one-shot, instead of training
    nodes: int | None = None  # job size; None: the profile's
    gpus: int | None = None
    single_process: bool = False  # too small to share across processes (mini-suite model, one-shot candidates)
    out_dir: str | None = None  # where the checkpoints (and the training's resume state) go; None: the default
    batch_size: int | None = None  # the global batch (None: the recipe's)
    loop: tuple[tuple[str, Any], ...] = ()  # LoopOptions switches, as (name, value) pairs
    stem: str | None = None  # the first part of the one-shot candidates' names (the source row, or file and digest)
    samples: int | None = None  # the calibration sample's size (None: the recipe's)
    calibration_task: str | None = None  # the sample drawn from this downstream task (None: the upstream data)

    @property
    def name(self) -> str:
        """The unit's key in the upstream store (its ledger line, claim, failure file)."""
        if len(self.products) == 1:
            return self.products[0]
        if self.source:  # as its candidates are named
            return oneshot_name(self.stem or self.source, self.method, self.sparsities, self.recipe_name, self.seed)
        sparsities = "-".join(format_sparsity(s).rstrip("%") for s in self.sparsities)
        return f"{self.arch}_{self.method}_{sparsities}_{self.recipe_name}_s{self.seed}"

    @property
    def label(self) -> str:
        how = f"one-shot from {self.stem or self.source}" if self.source else f"{self.recipe_name} recipe"
        data = f"calibrated on {self.calibration_task}" if self.calibration_task else self.dataset
        return (f"{self.method} {', '.join(format_sparsity(s) for s in self.sparsities)} {self.arch} ({how}, "
                f"{data}, seed {self.seed})")

    def train_kwargs(self) -> dict[str, Any]:
        """Keywords of ``transferbench.upstream.train_upstream`` for this unit (device and speed switches aside)."""
        return {"method": self.method, "sparsities": list(self.sparsities), "arch": self.arch,
                "dataset": self.dataset, "recipe": self.recipe, "seed": self.seed,
                "data_root": Path(self.data_root).expanduser() if self.data_root else None,
                "out_dir": Path(self.out_dir) if self.out_dir else None, "batch_size": self.batch_size,
                **({"options": LoopOptions(**dict(self.loop))} if self.loop else {})}

    def folder(self) -> Path:
        """Where ``train_upstream`` writes the unit's checkpoints and keeps its resume state."""
        return Path(self.out_dir) if self.out_dir else checkpoint_dir() / "upstream"


def make_unit(method: str, sparsities: list, *, recipe: str | Path | None = None, seed: int = 0,
              arch: str | None = None, dataset: str | None = None, data_root: str | Path | None = None,
              source: str | None = None, nodes: int | None = None, gpus: int | None = None,
              single_process: bool = False, out_dir: str | Path | None = None, batch_size: int | None = None,
              loop: dict[str, Any] | None = None) -> UpstreamUnit:
    """One unit, checked as `transferbench upstream` checks its flags (method, sparsities, recipe) before
    anything is trained or submitted. ``recipe`` None: small_cpu, or for ``source`` the one
    ``prune_published`` takes for the dataset. ``loop``: ``LoopOptions`` switches."""
    where = {"data_root": str(data_root) if data_root else None, "nodes": nodes, "gpus": gpus,
             "out_dir": str(Path(out_dir).expanduser().resolve()) if out_dir else None}
    if source:
        return _oneshot_unit(method, sparsities, source, recipe, dataset, arch, where)
    try:  # a bad switch fails here, before anything is submitted
        LoopOptions(**(loop or {}))
    except TypeError as exc:
        raise TransferbenchError(f"bad loop switch ({', '.join(LOOP_KEYS)}): {exc}") from None
    method = recipe_method(method, recipe or MINI_RECIPE)  # lth_t → lth, as `transferbench upstream` reads it
    fractions = tuple(checked_sparsities(method, list(sparsities)))
    rec, _ = method_recipe(method, recipe or MINI_RECIPE, arch, dataset, batch_size=batch_size,
                           sparsity=fractions[0])
    products = tuple(checkpoint_name(rec, method, s, seed) for s in fractions)
    return UpstreamUnit(method, fractions, rec["arch"], rec["dataset"], str(recipe or MINI_RECIPE), rec["name"],
                        products, seed, single_process=single_process, batch_size=batch_size,
                        loop=tuple(sorted((loop or {}).items())), **where)


def _oneshot_unit(method: str, sparsities: list, source: str, recipe: str | Path | None, dataset: str | None,
                  arch: str | None, where: dict[str, Any]) -> UpstreamUnit:
    """One-shot candidates of the registered dense model ``source`` (``from:``), named as ``prune_published``
    names them (the dense row, the method, the sparsity, the recipe and its calibration seed). A file by path is
    named after its digest, known only by reading it: add it first (``transferbench checkpoints add``), name that."""
    if method not in ONE_SHOT_METHODS:
        raise TransferbenchError(f"--from prepares one-shot candidates of CrAM models: use --method "
                                 f"{' or '.join(ONE_SHOT_METHODS)}, not {method}")
    row = named_checkpoint(source)
    if row is None or row.oneshot or row.sparsity != 0.0:
        raise TransferbenchError(f"--from {source}: not the name of a registered dense model; a sweep or a SLURM job "
                                 "prepares candidates of a registry row (add a file first: `transferbench "
                                 "checkpoints add FILE --method M --sparsity 0 --arch A --name NAME`)")
    fractions = tuple(checked_sparsities(method, list(sparsities)))
    rec = load_recipe(recipe or DEFAULT_RECIPES.get(dataset or "imagenet", MINI_RECIPE))
    products = tuple(oneshot_names(row.name, method, fractions, rec))
    if arch and arch != row.arch:
        raise TransferbenchError(f"--from {source} is a {row.arch} (registry row); drop --arch {arch}")
    return UpstreamUnit(method, fractions, row.arch, dataset or rec["dataset"], str(recipe or rec["name"]),
                        rec["name"], products, calibration_seed(rec), source=source, single_process=True, **where)


def parse_upstream(raw: Any, origin: str) -> tuple[UpstreamUnit, ...]:
    """The units of a sweep's ``upstream:`` list (method × sparsity × seed × recipe), each problem one line naming
    the sweep file."""
    units: list[UpstreamUnit] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not isinstance(item, dict) or "method" not in item:
            raise TransferbenchError(f"sweep {origin}: each upstream entry needs a method, got {item!r}")
        method = str(item["method"])
        if unknown := sorted(set(item) - set(UPSTREAM_ENTRY_KEYS)):
            raise TransferbenchError(f"sweep {origin}: upstream {method!r} has unknown key(s) {', '.join(unknown)}; "
                                     f"known: {', '.join(UPSTREAM_ENTRY_KEYS)}")
        sparsities = _as_list(item.get("sparsity", 0 if method == "dense" else None))
        if sparsities == [None]:
            raise TransferbenchError(f"sweep {origin}: upstream {method!r} needs a sparsity")
        together = bool(item.get("from")) or method in ONE_MODEL_MANY_SPARSITIES
        size = {k: _positive(item.get(k), f"upstream {method!r} {k}", origin) for k in ("nodes", "gpus")}
        if size["gpus"] and size["nodes"] and size["gpus"] % size["nodes"]:
            raise TransferbenchError(f"sweep {origin}: upstream {method!r}: gpus {size['gpus']} do not split evenly "
                                     f"over nodes {size['nodes']}; give a multiple of the node count")
        for recipe in _as_list(item.get("recipe", MINI_RECIPE)):
            for seed in _as_list(item.get("seed", 0)):
                for group in [sparsities] if together else [[s] for s in sparsities]:
                    try:
                        units.append(make_unit(
                            method, group, recipe=str(recipe), seed=_integer(seed, origin), arch=item.get("arch"),
                            dataset=item.get("dataset"), data_root=item.get("data_root"),
                            source=str(item["from"]) if item.get("from") else None, **size,
                            batch_size=item.get("batch_size"), loop={k: item[k] for k in LOOP_KEYS if k in item}))
                    except TransferbenchError as exc:
                        raise TransferbenchError(f"sweep {origin}: upstream {method!r}: {exc}") from None
    return unique_products(tuple(units), origin)


def unique_products(units: tuple[UpstreamUnit, ...], origin: str) -> tuple[UpstreamUnit, ...]:
    """``units`` unchanged when no checkpoint is made twice (by upstream or prune entries); one line otherwise."""
    products = [p for u in units for p in u.products]
    if twice := sorted({p for p in products if products.count(p) > 1}):
        raise TransferbenchError(f"sweep {origin}: upstream or prune entries make {', '.join(twice)} more than once; "
                                 "list each method, sparsity, seed and recipe once")
    return units


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _integer(value: Any, origin: str) -> int:
    return SEED.check(value, "upstream seeds", f"sweep {origin}: ")  # as `upstream --seed`


def _positive(value: Any, what: str, origin: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TransferbenchError(f"sweep {origin}: {what} must be a whole number of 1 or more, got {value!r}")
    return value
