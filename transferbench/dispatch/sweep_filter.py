"""Quick tries of a sweep: part of its grid (``sweep SPEC --only task=cifar10,method=acdc``), on a subset of each
split (``--limit N``), and a sweep printed with the size of its grid (``sweep show NAME``).

``--only`` narrows the grid's axes: a run is kept when its task, method, mode, seed and sparsity are each among
the values given for that key (keys not given keep every value). A key may be repeated (``task=cifar10,task=pets``
or ``--only`` given twice): its values add up. Methods match as everywhere (``rigl`` is every RigL variant of the
sweep), sparsities are fractions (0.9) or percents (90%). A key or a value the sweep does not have is a one-line
error, so a typo never runs an empty or a whole grid.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from .. import shipped
from ..errors import TransferbenchError
from ..vocabulary import format_sparsity, method_matches, parse_sparsity
from .sweep import CheckpointEntry, SweepSpec

ONLY_KEYS = ("task", "method", "mode", "seed", "sparsity")


def parse_only(items: list[str] | None) -> dict[str, list[str]]:
    """``--only`` values (``KEY=VALUE[,KEY=VALUE...]``, the flag possibly repeated) as key → values."""
    only: dict[str, list[str]] = {}
    for item in items or []:
        for pair in item.split(","):
            key, sep, value = (part.strip() for part in pair.partition("="))
            if not sep or not key or not value:
                raise TransferbenchError(f"--only expects KEY=VALUE pairs separated by commas (keys: "
                                         f"{', '.join(ONLY_KEYS)}), got {pair.strip()!r}")
            if key not in ONLY_KEYS:
                raise TransferbenchError(f"--only {key}={value}: unknown key {key!r}; use one of "
                                         f"{', '.join(ONLY_KEYS)}")
            only.setdefault(key, []).append(value)
    return only


def narrow_sweep(sweep: SweepSpec, only: dict[str, list[str]] | None = None, limit: int | None = None) -> SweepSpec:
    """``sweep`` with its grid narrowed to ``only`` (``parse_only``) and, with ``limit``, ``limit`` set for every
    mode (a hyper-parameter: part of every run key, see ``runspec.HParams.limit``)."""
    only = only or {}
    checkpoints = _checkpoints(sweep, only.get("method"), only.get("sparsity"))
    tasks = _kept(sweep.tasks, only.get("task"), "task", sweep)
    modes = _kept(sweep.modes, only.get("mode"), "mode", sweep)
    seeds = {mode: sweep.seeds[mode] for mode in modes}
    if "seed" in only:
        wanted = {_seed(value) for value in only["seed"]}
        if missing := sorted(wanted - {s for mode in modes for s in seeds[mode]}):
            raise TransferbenchError(f"--only seed={missing[0]}: sweep {sweep.name} has no such seed in mode(s) "
                                     f"{', '.join(modes)}; its seeds: {_seed_text(sweep, modes)}")
        seeds = {mode: kept for mode in modes if (kept := tuple(s for s in seeds[mode] if s in wanted))}
        modes = tuple(seeds)
    overrides = {mode: dict(sweep.overrides.get(mode, {})) for mode in modes}
    if limit is not None:
        if limit < 0:
            raise TransferbenchError(f"--limit must be a number of images per split (0: all), not {limit}")
        for values in overrides.values():
            values["limit"] = limit
    products = {entry.upstream for entry in checkpoints if entry.upstream}
    upstream = sweep.upstream  # narrowed to what the remaining checkpoints use, when those were chosen
    if "method" in only or "sparsity" in only:
        upstream = tuple(unit for unit in upstream if set(unit.products) & products)
    narrowed = [f"--only {','.join(f'{k}={v}' for k, values in only.items() for v in values)}"] if only else []
    narrowed += [f"--limit {limit}"] if limit is not None else []
    return replace(sweep, checkpoints=checkpoints, tasks=tasks, modes=modes, seeds=seeds, overrides=overrides,
                   upstream=upstream, source=" ".join([sweep.source, *narrowed]))  # plans say it is narrowed


def _kept(values: tuple[str, ...], wanted: list[str] | None, key: str, sweep: SweepSpec) -> tuple[str, ...]:
    if wanted is None:
        return values
    if missing := [w for w in wanted if w not in values]:
        raise TransferbenchError(f"--only {key}={missing[0]}: sweep {sweep.name} has no such {key}; its {key}s: "
                                 f"{', '.join(values)}")
    return tuple(v for v in values if v in wanted)


def _checkpoints(sweep: SweepSpec, methods: list[str] | None,
                 sparsities: list[str] | None) -> tuple[CheckpointEntry, ...]:
    entries = sweep.checkpoints
    if methods is not None:
        available = list(dict.fromkeys(e.method for e in entries))
        chosen: set[str] = set()
        for name in methods:
            if not (matches := method_matches(name, available)):
                raise TransferbenchError(f"--only method={name}: sweep {sweep.name} has no such method; its "
                                         f"methods: {', '.join(available)}")
            chosen.update(matches)
        entries = tuple(e for e in entries if e.method in chosen)
    if sparsities is not None:
        wanted = [parse_sparsity(value, flag="--only sparsity=") for value in sparsities]
        has = sorted({e.sparsity for e in entries})
        if missing := [w for w in wanted if not any(abs(w - s) < 1e-6 for s in has)]:
            raise TransferbenchError(f"--only sparsity={format_sparsity(missing[0])}: sweep {sweep.name} has no such "
                                     f"sparsity{' for those methods' if methods else ''}; its sparsities: "
                                     f"{', '.join(format_sparsity(s) for s in has)}")
        entries = tuple(e for e in entries if any(abs(w - e.sparsity) < 1e-6 for w in wanted))
    if not entries:  # each method and sparsity exists, but not together (acdc at 98%)
        raise TransferbenchError(f"--only method={','.join(methods or [])} sparsity={','.join(sparsities or [])}: "
                                 f"sweep {sweep.name} has no checkpoint with both; its checkpoints: "
                                 f"{', '.join(e.label for e in sweep.checkpoints)}")
    return entries


def _seed(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TransferbenchError(f"--only seed={value}: a seed is an integer, e.g. seed=21") from None


def _seed_text(sweep: SweepSpec, modes: tuple[str, ...]) -> str:
    return "; ".join(f"{mode} {', '.join(map(str, sweep.seeds[mode]))}" for mode in modes)


def sweep_text(name_or_path: str) -> tuple[str, str]:
    """(the YAML text, where it comes from) of a packaged sweep or a sweep file, as written (comments included)."""
    _, origin, name = shipped.load("sweep", name_or_path, "sweep show")  # the one-line errors of a missing file
    path = Path(origin)
    if path.is_file():
        return path.read_text(encoding="utf-8"), origin
    return (resources.files(shipped.KINDS["sweep"].package) / f"{name}.yaml").read_text(encoding="utf-8"), origin


def grid_lines(sweep: SweepSpec) -> list[str]:
    """The size of the sweep's grid, one line per mode and the total: checkpoints × tasks × seeds [× solvers]."""
    lines = []
    for mode in sweep.modes:
        solvers = f" x {len(sweep.solvers)} solver(s)" if mode == "linear" else ""
        lines.append(f"{mode}: {len(sweep.checkpoints)} checkpoint(s) x {len(sweep.tasks)} task(s) x "
                     f"{len(sweep.seeds[mode])} seed(s){solvers} = {sweep.grid_size(mode)} run(s)")
    total = sum(sweep.grid_size(mode) for mode in sweep.modes)
    upstream = f"; {len(sweep.upstream)} upstream unit(s) first" if sweep.upstream else ""
    return [*lines, f"total: {total} run(s){upstream}"]
