"""The stage of a sweep before its transfer jobs: the upstream units it trains or prepares.

Planning (``plan_upstream``) is pure: it reads the sweep, the checkpoint registry and the upstream store, and
changes nothing. A stage makes what the plan found missing and is always called explicitly: ``sweep`` runs it
here (debug, local executors: ``run_upstream_here``) or submits it (SLURM: ``upstream_jobs.submit_upstream``)
before it submits the transfer jobs.

The units are the sweep's ``upstream:`` entries, plus the mini-suite models its checkpoints name that are not
registered yet (small_cpu recipe, one process). The upstream store is ``<results>/upstream/``, laid out as a
results root (``store.layout``) with one key per unit: ``jobs/ledger.jsonl`` (submitted jobs), ``work/<unit>/``
(claim and heartbeat) and ``failures/<unit>.json``; a unit is done when every checkpoint it makes is registered.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..checkpoints import list_checkpoints, lookup_checkpoint
from ..errors import TransferbenchError
from ..store import (
    DONE,
    FAILED,
    LOST,
    MISSING,
    QUEUED,
    RUNNING,
    STALE_AFTER_S,
    TO_RUN,
    UNFINISHED,
    RunState,
    claim_alive,
    claim_path,
    claim_runs,
    error_line,
    run_states,
    write_failure,
)
from ..upstream import MINI_ARCH, mini_checkpoint_missing, train_upstream
from ..upstream.from_dense import prune_published
from ..upstream.mini import MINI_RECIPE, ONE_MODEL_MANY_SPARSITIES, last_training_time
from ..upstream.state import upstream_progress
from .sweep import CheckpointEntry, SweepSpec
from .upstream_spec import UpstreamUnit, make_unit

log = logging.getLogger("transferbench")
UPSTREAM_STORE = "upstream"


def upstream_store(results: str | Path) -> Path:
    """Where a sweep's upstream stage keeps its ledger, claims and failures: ``<results>/upstream``."""
    return Path(results) / UPSTREAM_STORE


@dataclass
class UpstreamPlan:
    units: list[UpstreamUnit]
    states: dict[str, RunState]  # unit name → state
    binding: dict[CheckpointEntry, str] = field(default_factory=dict)  # transfer checkpoint → product it waits for

    def unit_of(self, product: str) -> UpstreamUnit:
        return next(u for u in self.units if product in u.products)

    def to_run(self, retry_failed: bool = False) -> list[UpstreamUnit]:
        """The units a sweep runs or submits: missing, lost, unfinished (they resume), or only the failed ones."""
        wanted = {FAILED} if retry_failed else TO_RUN
        return [u for u in self.units if self.states[u.name].state in wanted]

    def job_for(self, product: str) -> str:
        """The job a transfer job using ``product`` waits for ("" when its unit is neither queued nor running)."""
        state = self.states[self.unit_of(product).name]
        return state.job_id if state.state in (QUEUED, RUNNING) else ""

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.state for s in self.states.values()))


def plan_upstream(sweep: SweepSpec, results: str | Path, submitted: dict[str, str] | None = None,
                  notes: list[str] | None = None) -> UpstreamPlan:
    """The sweep's upstream units and where each stands. ``submitted`` (unit name → job id): units submitted by
    this command, queued whatever squeue says yet."""
    units, binding = upstream_units(sweep)
    states = upstream_states(units, upstream_store(results), notes)
    for name, job_id in (submitted or {}).items():
        states[name] = RunState(QUEUED, f"job {job_id} (submitted now)", job_id)
    return UpstreamPlan(units, states, binding)


def upstream_units(sweep: SweepSpec) -> tuple[list[UpstreamUnit], dict[CheckpointEntry, str]]:
    """The sweep's upstream entries and the mini-suite models its checkpoints need, with the product each transfer
    checkpoint waits for. A mini-suite model is a unit (small_cpu recipe; CrAM's sparsities one unit) while it
    is missing, and stays one once this stage has registered it, so that its transfer runs keep their binding."""
    units = list(sweep.upstream)
    binding = {e: e.upstream for e in sweep.checkpoints if e.upstream}
    mini: dict[tuple[str, str, bool], list[CheckpointEntry]] = {}
    for entry in sweep.checkpoints:
        if entry.path or entry.upstream or entry.arch != MINI_ARCH:
            continue
        missing = mini_checkpoint_missing(entry.method, entry.sparsity, entry.arch)
        if missing or _made_by_stage(entry):
            mini.setdefault((entry.method, entry.arch, missing), []).append(entry)
    for (method, arch, _), entries in mini.items():
        groups = [entries] if method in ONE_MODEL_MANY_SPARSITIES else [[e] for e in entries]
        for group in groups:
            unit = make_unit(method, [e.sparsity for e in group], recipe=MINI_RECIPE, arch=arch, single_process=True)
            units.append(unit)
            binding.update({e: p for e, p in zip(group, unit.products, strict=True)})
    return units, binding


def _made_by_stage(entry: CheckpointEntry) -> bool:
    """The registered mini-suite model of ``entry`` is the one this stage trains (not one the user registered)."""
    spec = lookup_checkpoint(entry.method, entry.sparsity, entry.arch)
    unit = make_unit(entry.method, [entry.sparsity], recipe=MINI_RECIPE, arch=entry.arch)
    return spec is not None and spec.name == unit.products[0]


def registered_products() -> set[str]:
    """Names of the registered checkpoints whose files exist (what upstream units register)."""
    return {s.name for s in list_checkpoints() if s.source == "local" and s.path and Path(s.path).is_file()}


def unit_done(unit: UpstreamUnit, registered: set[str] | None = None) -> bool:
    """Every checkpoint of ``unit`` is registered: the one test of "done" (job, stage and status ask it)."""
    registered = registered_products() if registered is None else registered
    return all(p in registered for p in unit.products)


def unit_progress(unit: UpstreamUnit) -> tuple[int, int] | None:
    """(epochs finished, epochs in all) from the unit's newest resume state, None when it has none. The state's
    folder is named after the unit's first checkpoint and the run's identity (``upstream.state.state_dir``); the
    identity also covers the job's world size and switches, so the newest folder of that name is this unit's."""
    folders = sorted(((unit.folder() / "work").glob(f"{glob.escape(unit.products[0])}-*")),
                     key=lambda f: f.stat().st_mtime)
    return upstream_progress(folders[-1]) if folders else None


def upstream_states(units: list[UpstreamUnit], store: Path, notes: list[str] | None = None) -> dict[str, RunState]:
    """Each unit's state: done when registered, else as a run of the upstream store is judged (claim, ledger,
    failure file), with the training's progress where it has resume state."""
    registered = registered_products()
    pending = [u for u in units if not unit_done(u, registered)]
    judged = run_states(store, [u.name for u in pending], notes=notes) if pending else {}
    states = {u.name: RunState(DONE, "registered" if u.products == (u.name,) else
                               f"registered as {', '.join(u.products)}") for u in units}
    for unit in pending:
        states[unit.name] = _with_progress(judged[unit.name], unit_progress(unit))
    return states


def _with_progress(state: RunState, progress: tuple[int, int] | None) -> RunState:
    """A unit with resume state and no live job is unfinished (the next sweep resumes it); the others show how
    far their training got."""
    if progress is None:
        return state
    where = f"epoch {progress[0]} of {progress[1]}"
    if state.state in (MISSING, LOST):
        before = f"; {state.detail}" if state.state == LOST else ""
        return RunState(UNFINISHED, f"{where} (resume state, no job running it{before})", state.job_id, state.path)
    return replace(state, detail=f"{where}; {state.detail}")


def execute_upstream(unit: UpstreamUnit, store: Path | None, job_id: str, device: str = "auto",
                     **train_options: Any) -> list[str]:
    """Make the unit's checkpoints unless they are registered or another job is at it; returns their paths.

    Every process of a job calls this (``RANK`` from the job's environment); the first one holds the unit's
    claim (its heartbeat is what `status` calls running) and writes the failure file. ``store`` None: no claim
    and no failure file (the demo). ``train_options``: further keywords of ``train_upstream``.
    """
    if unit_done(unit):
        log.info("upstream %s: already registered", unit.name)
        return []
    if store is None:
        return _produce(unit, device, train_options)
    if holder := _held_elsewhere(store, unit.name, job_id):
        log.warning("upstream %s is held by job %s; not training it here", unit.name, holder)
        return []
    if int(os.environ.get("RANK", "0")) != 0:
        return _produce(unit, device, train_options)
    with claim_runs([unit.name], store, job_id) as held:
        if not held or unit_done(unit):  # taken, or finished by another job meanwhile
            return []
        try:
            return _produce(unit, device, train_options)
        except Exception as exc:
            write_failure(store, unit.name, exc, job_id)
            raise


def _held_elsewhere(store: Path, name: str, job_id: str) -> str:
    """The job holding a fresh claim on the unit, if it is not this job ("" else). Every process asks, so that
    none of a job's processes starts training (and waits for the others) when the unit is taken."""
    path = claim_path(store, name)
    try:
        claim, heartbeat = json.loads(path.read_text()), path.stat().st_mtime
    except (OSError, ValueError):
        return ""
    holder = str(claim.get("job_id", "?")) if isinstance(claim, dict) else "?"
    alive = claim_alive(store, name, claim if isinstance(claim, dict) else {}, time.time() - heartbeat, STALE_AFTER_S)
    return holder if holder != job_id and alive else ""  # a killed holder's lock is free: not held


def _produce(unit: UpstreamUnit, device: str, train_options: dict[str, Any]) -> list[str]:
    if unit.source:
        return prepare_oneshot(unit, device)
    results = train_upstream(**unit.train_kwargs(), device=device, **train_options)
    return [str(r.path) for r in results]


def prepare_oneshot(unit: UpstreamUnit, device: str) -> list[str]:
    """One-shot candidates of the dense model ``unit.source`` (CrAM's ``from:``, a ``prune:`` entry's pruner),
    registered as ``unit.products``."""
    results = prune_published(unit.source, unit.method, list(unit.sparsities), dataset=unit.dataset,
                              recipe=unit.recipe, data_root=unit.train_kwargs()["data_root"], arch=unit.arch,
                              device=device, out_dir=unit.train_kwargs()["out_dir"], samples=unit.samples,
                              calibration_task=unit.calibration_task)
    if names := sorted({r.spec.name for r in results} - set(unit.products)):  # planner and maker disagree
        raise TransferbenchError(f"upstream {unit.name}: registered {', '.join(names)}, not the names the sweep "
                                 f"planned ({', '.join(unit.products)}); this is a bug, please report it")
    return [str(r.path) for r in results]


def run_upstream_here(units: list[UpstreamUnit], store: Path | None, device: str = "auto",
                      echo=print, train_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Make ``units`` one after the other in this process; returns (unit, first error line) of those that failed
    (recorded in the store's failures/ as well). The transfer jobs that need a failed unit cannot start."""
    failed = []
    if units:
        echo(f"upstream stage: {len(units)} model(s) to make in this process before the transfer jobs start")
    for i, unit in enumerate(units, 1):
        timing = "" if unit.source else f" (here it {last_training_time(unit.method, unit.arch, unit.recipe_name)})"
        echo(f"[upstream {i}/{len(units)}] {'preparing' if unit.source else 'training'} {unit.label} ...{timing}")
        start = time.perf_counter()
        try:
            execute_upstream(unit, store, job_id="here", device=device, **(train_options or {}))
        except Exception as exc:  # recorded in the store by execute_upstream; the other units go on
            failed.append((unit.name, error_line(exc)))
            echo(f"[upstream {i}/{len(units)}] {unit.name} failed: {error_line(exc)}")
            continue
        echo(f"[upstream {i}/{len(units)}] {unit.name} ready ({time.perf_counter() - start:.0f} s)")
    return failed


def prepare_upstream(sweep: SweepSpec, echo=print, results: str | Path | None = None) -> list[UpstreamUnit]:
    """Make the sweep's upstream units that are not done, in this process (the demo's stage); returns them. A
    failure is raised (after the other units were made)."""
    units, _ = upstream_units(sweep)
    registered = registered_products()
    todo = [u for u in units if not unit_done(u, registered)]
    failed = run_upstream_here(todo, upstream_store(results) if results else None, echo=echo)
    if failed:
        raise TransferbenchError(f"{len(failed)} upstream unit(s) failed (first: {failed[0][0]}: {failed[0][1]})")
    return todo
