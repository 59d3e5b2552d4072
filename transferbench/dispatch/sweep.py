"""Sweep specs: a YAML grid of checkpoints × tasks × modes × seeds (× solvers) with hyper-parameter overrides.

    name: paper_resnet50_linear
    checkpoints:                      # registry entries (method × sparsity [× arch]) or local files
      - {method: dense, sparsity: 0}
      - {method: acdc, sparsity: [80%, 90%, 95%]}
      - {method: mine, sparsity: 0.9, path: /ckpts/mine90.pth, arch: resnet50}
    tasks: paper                      # paper (the 12), mini (offline), or a list of task names
    modes: [linear]                   # linear, full, estimate (the transferability estimators, no training)
    seeds: [21, 51, 81, 111, 141]     # or per mode: {linear: [...], full: [...]}
    solvers: [sgd]                    # linear probes only: sgd (the paper's) and/or lbfgs
    train_sizes: [0, 100, vtab1k]     # optional low-data axis: training images (0: whole split; vtab1k: 1000/200)
    overrides: {}                     # hyper-parameters for every mode, or per mode: {linear: {...}, full: {...}}
    data_root: /data                  # optional defaults for the run context (CLI flags win)
    checkpoint_dir: /ckpts
    profile: example_site             # optional: the cluster profile (slurm/<name>.yaml or a path; --profile wins)
    upstream:                         # optional: checkpoints trained first, in a stage of their own
      - {method: acdc, sparsity: [80%, 90%], recipe: imagenet_resnet50, dataset: imagenet, data_root: /imagenet}
    prune:                            # optional: one-shot post-training candidates, made in the same stage
      - {method: [wanda, sparsegpt], sparsity: [50%, 70%], from: /ckpts/deit_s.safetensors,
         arch: deit_small_patch16_224, calibration: imagenet, data_root: /imagenet, samples: 512}

Upstream and prune entries (``upstream_spec``, ``prune_spec``) are submitted before the transfer jobs, which wait
for them (SLURM ``afterok``); a checkpoint entry with their method, sparsity and arch uses what they register, and
without ``checkpoints:`` the sweep transfers every checkpoint they make.

The paper's sweeps ship with the package (`transferbench sweep paper_resnet50_linear`); any other name is a path.
Every key, with an example, is documented in docs/sweeps.md; ``sweep_filter`` narrows a grid (``--only``,
``--limit``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import shipped
from ..bounds import SEED
from ..checkpoints.registry import arch_family, named_checkpoint
from ..errors import TransferbenchError
from ..names import check_name
from ..runspec import MODES, resolve_hparams
from ..tasks import get_task, list_tasks
from ..tasks.subset import LOW_DATA_PRESETS
from ..vocabulary import format_sparsity, normalize_sparsity

if TYPE_CHECKING:  # upstream_spec needs torch; `sweep --help` lists the packaged sweeps without it
    from .upstream_spec import UpstreamUnit

SOLVERS = ("sgd", "lbfgs")
EXECUTORS = ("debug", "local", "slurm")  # where a sweep's jobs run (dispatch.submit)
_KEYS = {"name", "description", "checkpoints", "tasks", "modes", "seeds", "solvers", "overrides", "data_root",
         "checkpoint_dir", "arch", "upstream", "prune", "profile", "train_sizes"}
_CHECKPOINT_KEYS = {"method", "sparsity", "arch", "path", "seed", "recipe"}  # seed, recipe: of an upstream entry


@dataclass(frozen=True)
class CheckpointEntry:
    """One upstream checkpoint of the grid: a registry entry, a local file when ``path`` is set, or what an
    upstream entry of the sweep registers under the name ``upstream``."""

    method: str
    sparsity: float
    arch: str | None = None
    path: str | None = None
    upstream: str | None = None

    @property
    def label(self) -> str:
        where = f" ({self.path})" if self.path else f" (upstream {self.upstream})" if self.upstream else ""
        return f"{self.method} {format_sparsity(self.sparsity)} {self.arch or ''}".rstrip() + where


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str
    checkpoints: tuple[CheckpointEntry, ...]
    tasks: tuple[str, ...]
    modes: tuple[str, ...]
    seeds: dict[str, tuple[int, ...]]
    solvers: tuple[str, ...] = ("sgd",)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_root: str | None = None
    checkpoint_dir: str | None = None
    description: str = ""
    upstream: tuple[UpstreamUnit, ...] = ()
    profile: str | None = None  # the cluster profile the sweep asks for; `sweep --profile` wins
    train_sizes: tuple[int | str, ...] = (0,)  # the low-data axis: training images per run (0: the whole split)

    def grid_size(self, mode: str) -> int:
        """Runs of ``mode`` in the grid (checkpoints × tasks × seeds [× solvers])."""
        if mode not in self.modes:
            return 0
        per = len(self.seeds[mode]) * (len(self.solvers) if mode == "linear" else 1) * len(self.train_sizes)
        return len(self.checkpoints) * len(self.tasks) * per


def packaged_sweeps() -> list[str]:
    return shipped.names("sweep")


def load_sweep(name_or_path: str | Path) -> SweepSpec:
    """A packaged sweep by name (see ``packaged_sweeps()``) or a sweep YAML file."""
    raw, origin, _ = shipped.load("sweep", name_or_path)
    return parse_sweep(raw, origin)


def parse_sweep(raw: Any, origin: str) -> SweepSpec:
    if not isinstance(raw, dict):
        raise TransferbenchError(f"sweep {origin} must be a YAML mapping with checkpoints, tasks, modes, seeds")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise TransferbenchError(
            f"sweep {origin}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    from .prune_spec import parse_prune
    from .upstream_spec import parse_upstream, unique_products

    upstream = parse_upstream(raw["upstream"], origin) if raw.get("upstream") not in (None, []) else ()
    upstream = unique_products(upstream + (parse_prune(raw["prune"], origin) if raw.get("prune") not in (None, [])
                                           else ()), origin)
    for key in ("checkpoints", "tasks", "modes", "seeds") if not upstream else ("tasks", "modes", "seeds"):
        if raw.get(key) in (None, [], {}):
            raise TransferbenchError(f"sweep {origin}: '{key}' is missing or empty")
    modes = tuple(_as_list(raw["modes"]))
    if bad := [m for m in modes if m not in MODES]:
        raise TransferbenchError(f"sweep {origin}: modes {bad} are not {', '.join(MODES)}")
    solvers = tuple(_as_list(raw.get("solvers", ["sgd"])))
    if bad := [s for s in solvers if s not in SOLVERS]:
        raise TransferbenchError(f"sweep {origin}: solvers {bad} are not sgd or lbfgs")
    for key, values in (("modes", modes), ("solvers", solvers)):  # else the planner's "same run twice" error
        if twice := sorted({v for v in values if values.count(v) > 1}):
            raise TransferbenchError(f"sweep {origin}: {key} lists {', '.join(twice)} more than once; list each once")
    spec = SweepSpec(
        name=str(raw.get("name") or Path(origin).stem),
        source=origin,
        checkpoints=_checkpoints(raw.get("checkpoints"), raw.get("arch"), origin, upstream),
        tasks=_tasks(raw["tasks"], origin),
        modes=modes,
        seeds=_per_mode(raw["seeds"], modes, origin, "seeds", _seeds),
        solvers=solvers,
        overrides=_per_mode(raw.get("overrides") or {}, modes, origin, "overrides", _overrides),
        data_root=raw.get("data_root"),
        checkpoint_dir=raw.get("checkpoint_dir"),
        description=str(raw.get("description") or ""),
        upstream=upstream,
        profile=_profile(raw.get("profile"), origin),
        train_sizes=_train_sizes(raw.get("train_sizes"), origin),
    )
    if spec.train_sizes != (0,) and any("train_size" in o for o in spec.overrides.values()):
        raise TransferbenchError(f"sweep {origin}: train_size is set twice (train_sizes and overrides): keep "
                                 "train_sizes")
    for mode in modes:  # fail at load time, not in job 4711 on the cluster
        try:
            for solver, size in itertools.product(solvers if mode == "linear" else (None,), spec.train_sizes):
                resolve_hparams(mode, 0.01, {**spec.overrides[mode], **({"solver": solver} if solver else {}),
                                             **({"train_size": size} if size else {})})
        except TransferbenchError as exc:
            raise TransferbenchError(f"sweep {origin}: overrides for {mode}: {exc}") from None
    return spec


def _train_sizes(raw: Any, origin: str) -> tuple[int | str, ...]:
    """The low-data axis: whole numbers (0: the whole training split) or preset names (vtab1k), each once."""
    if raw in (None, [], ()):
        return (0,)
    sizes = tuple(_as_list(raw))
    for size in sizes:
        if not (isinstance(size, str) and size in LOW_DATA_PRESETS) and not (
                isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            raise TransferbenchError(f"sweep {origin}: train_sizes holds {size!r}: each is a whole number of training "
                                     f"images (0: the whole split) or {', '.join(LOW_DATA_PRESETS)}")
    if len(set(sizes)) != len(sizes):
        raise TransferbenchError(f"sweep {origin}: train_sizes lists a size more than once; list each once")
    return sizes


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _checkpoints(raw: Any, default_arch: str | None, origin: str,
                 upstream: tuple[UpstreamUnit, ...]) -> tuple[CheckpointEntry, ...]:
    if raw in (None, []):  # a sweep of upstream entries only: transfer everything they make
        return (*_dense_sources(upstream), *(CheckpointEntry(u.method, s, u.arch, upstream=p) for u in upstream
                                            for s, p in zip(u.sparsities, u.products, strict=True)))
    entries: list[CheckpointEntry] = []
    for item in _as_list(raw):
        if not isinstance(item, dict) or "method" not in item or "sparsity" not in item:
            raise TransferbenchError(f"sweep {origin}: each checkpoint needs method and sparsity, got {item!r}")
        if unknown := sorted(set(item) - _CHECKPOINT_KEYS):
            raise TransferbenchError(f"sweep {origin}: checkpoint {item['method']!r} has unknown key(s) {unknown}")
        for key, value in (("method", item["method"]), ("arch", item.get("arch") or default_arch)):  # in run keys
            if value is not None:
                check_name(str(value), f"sweep {origin}: checkpoint {key}")
        sparsities = _as_list(item["sparsity"])
        if item.get("path") and (len(sparsities) != 1 or "seed" in item or "recipe" in item):
            raise TransferbenchError(f"sweep {origin}: a checkpoint with a path has exactly one sparsity and no "
                                     "seed or recipe (those choose an upstream entry's checkpoint)")
        for sparsity in sparsities:
            try:
                fraction = normalize_sparsity(sparsity)
            except TransferbenchError as exc:
                raise TransferbenchError(f"sweep {origin}: checkpoint {item['method']!r}: {exc}") from None
            entry = CheckpointEntry(str(item["method"]), fraction, item.get("arch") or default_arch,
                                    str(Path(item["path"]).expanduser()) if item.get("path") else None)
            entries.append(entry if entry.path else _bind(entry, item, upstream, origin))
    if len(set(entries)) != len(entries):
        raise TransferbenchError(f"sweep {origin}: a checkpoint is listed twice")
    return tuple(entries)


def _dense_sources(upstream: tuple[UpstreamUnit, ...]) -> list[CheckpointEntry]:
    """The dense model of each prune entry (a unit with a ``stem``), once each: transferred beside its candidates,
    so that every architecture's leaderboard has its dense row (and Δ vs dense). A file is method ``dense``; a
    registry row is found by its own method."""
    entries: list[CheckpointEntry] = []
    for unit in upstream:
        if unit.stem is None or unit.source is None:
            continue
        row = None if Path(unit.source).is_file() else named_checkpoint(unit.source)
        entry = CheckpointEntry(row.method, 0.0, row.arch) if row else CheckpointEntry("dense", 0.0, unit.arch,
                                                                                     unit.source)
        if entry not in entries:
            entries.append(entry)
    return entries


def _bind(entry: CheckpointEntry, item: dict, upstream: tuple[UpstreamUnit, ...], origin: str) -> CheckpointEntry:
    """The entry bound to the upstream product of the same method, sparsity and arch (``seed``/``recipe`` choose
    among several); unchanged when no upstream entry makes it (a registry checkpoint)."""
    matches = [(unit, product) for unit in upstream
               for sparsity, product in zip(unit.sparsities, unit.products, strict=True)
               if unit.method == entry.method and abs(sparsity - entry.sparsity) < 1e-9
               and entry.arch in (None, unit.arch, arch_family(unit.arch))
               and item.get("seed", unit.seed) == unit.seed
               and str(item.get("recipe", unit.recipe)) in (unit.recipe, unit.recipe_name)]
    if len(matches) > 1:
        raise TransferbenchError(f"sweep {origin}: checkpoint {entry.label} is made by {len(matches)} upstream "
                                 f"entries ({', '.join(p for _, p in matches)}); add seed: or recipe: to it")
    if not matches:
        if "seed" in item or "recipe" in item:
            raise TransferbenchError(f"sweep {origin}: checkpoint {entry.label} names a seed or recipe, but no "
                                     "upstream entry of the sweep makes it")
        return entry
    unit, product = matches[0]
    return CheckpointEntry(entry.method, entry.sparsity, unit.arch, upstream=product)


def _profile(raw: Any, origin: str) -> str | None:
    if raw is not None and (not isinstance(raw, str) or not raw.strip()):
        raise TransferbenchError(f"sweep {origin}: profile must be a profile name (slurm/<name>.yaml) or a .yaml path, "
                                 f"not {raw!r}")
    return raw


def _tasks(raw: Any, origin: str) -> tuple[str, ...]:
    if raw in ("paper", "mini", "all"):  # the transfer benchmark's tasks: a multi-label study's are named
        return tuple(t.name for t in list_tasks(None if raw == "all" else raw)
                     if not t.multilabel)
    names = [str(t) for t in _as_list(raw)]
    for name in names:
        try:
            get_task(name)
        except TransferbenchError as exc:
            raise TransferbenchError(f"sweep {origin}: {exc}") from None
    if len(set(names)) != len(names):
        raise TransferbenchError(f"sweep {origin}: a task is listed twice")
    return tuple(names)


def _per_mode(raw: Any, modes: tuple[str, ...], origin: str, key: str, parse) -> dict:
    if isinstance(raw, dict) and raw and set(raw) <= set(MODES):
        if missing := [m for m in modes if m not in raw and key == "seeds"]:
            raise TransferbenchError(f"sweep {origin}: {key} has no entry for mode(s) {missing}")
        return {m: parse(raw.get(m, {} if key == "overrides" else None), origin) for m in modes}
    return {m: parse(raw, origin) for m in modes}


def _seeds(raw: Any, origin: str) -> tuple[int, ...]:
    seeds = tuple(SEED.check(s, "seeds", f"sweep {origin}: ") for s in _as_list(raw))  # as `run --seed`
    if not seeds or len(set(seeds)) != len(seeds):
        raise TransferbenchError(f"sweep {origin}: seeds must be a non-empty list without repeats, got {raw!r}")
    return seeds


def _overrides(raw: Any, origin: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TransferbenchError(f"sweep {origin}: overrides must be a mapping of hyper-parameter: value")
    if "solver" in raw:
        raise TransferbenchError(f"sweep {origin}: set the linear solver(s) with 'solvers', not in overrides")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}
