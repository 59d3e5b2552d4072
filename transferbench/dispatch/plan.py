"""Plan a sweep: expand the grid into RunSpecs, find what is already done, and pack the rest into work units.

A work unit is what one job executes. Linear probes of one (checkpoint, task) share one feature extraction,
so all their seeds and solvers form one unit; a full fine-tuning run is a unit of its own (hours on a GPU,
checkpointed and requeued on its own).

A run whose checkpoint an upstream unit of the sweep has not registered yet is planned under the placeholder
identity ``upstream:<checkpoint name>``; its job waits for the upstream job (``WorkUnit.after``) and resolves
the checkpoint when it starts (``resolve_waiting``). Once the checkpoint exists the run has its real key, and
the plan still finds the job submitted under the placeholder (``_adopt_placeholder_states``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..checkpoints import resolve_checkpoint
from ..checkpoints.registry import named_checkpoint
from ..checkpoints.resolve import registered_ref
from ..errors import TransferbenchError
from ..runspec import CheckpointRef, RunSpec, group_by_extraction, make_spec
from ..store import DONE, MISSING, STATES, TO_RUN, RunState, run_states
from ..tasks import detect_layout, get_task
from ..upstream import MINI_ARCH
from .stages import UpstreamPlan, plan_upstream
from .sweep import CheckpointEntry, SweepSpec

MAX_RUNS = 20_000  # a bigger grid is refused unless asked for (--max-runs): 200k runs took 40 s and 1 GB to plan
UNRESOLVED = "unresolved:"
UPSTREAM = "upstream:"  # the identity of a checkpoint an upstream unit of the sweep has not registered yet


@dataclass(frozen=True)
class WorkUnit:
    """Runs that one job executes together (one feature extraction for linear units)."""

    mode: str
    specs: tuple[RunSpec, ...]
    after: tuple[str, ...] = ()  # upstream jobs that must succeed first (SLURM afterok)

    @property
    def name(self) -> str:
        first, ck = self.specs[0], self.specs[0].checkpoint
        return f"{first.task}.{ck.method}{round(ck.sparsity * 100, 2):g}.{ck.arch}.{self.mode}"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.run_key for s in self.specs)


@dataclass
class Plan:
    sweep: SweepSpec
    out: Path
    specs: list[RunSpec]
    states: dict[str, RunState]
    unresolved: dict[CheckpointEntry, str] = field(default_factory=dict)  # checkpoint → why it has no file
    missing_data: dict[str, str] = field(default_factory=dict)  # task → why its data is not usable
    notes: list[str] = field(default_factory=list)  # what limits the states (e.g. squeue unavailable)
    upstream: UpstreamPlan | None = None  # the upstream stage: its units and their states

    def blocked(self, spec: RunSpec) -> bool:
        """The run's checkpoint is not on disk and no upstream job is making it, or its task has no data."""
        identity = spec.checkpoint.identity
        return identity.startswith(UNRESOLVED) or spec.task in self.missing_data or \
            (identity.startswith(UPSTREAM) and not self.waits_for(spec))

    def waits_for(self, spec: RunSpec) -> str:
        """The upstream job the run's checkpoint comes from ("" when it is on disk or nobody makes it now)."""
        identity = spec.checkpoint.identity
        if self.upstream is None or not identity.startswith(UPSTREAM):
            return ""
        return self.upstream.job_for(identity[len(UPSTREAM):])

    def counts(self) -> list[dict]:
        """One row per mode: grid size, runs by state, and how many of them cannot run yet (and why)."""
        rows = []
        for mode in self.sweep.modes:
            specs = [s for s in self.specs if s.mode == mode]
            by_state = Counter(self.states[s.run_key].state for s in specs)
            rows.append({"mode": mode, "grid": len(specs), **{s: by_state.get(s, 0) for s in STATES},
                         "no_checkpoint": sum(s.checkpoint.identity.startswith(UNRESOLVED) for s in specs),
                         "no_data": sum(s.task in self.missing_data for s in specs)})
            if self.upstream and self.upstream.units:  # runs whose checkpoint the upstream stage has not made yet
                rows[-1]["after_upstream"] = sum(s.checkpoint.identity.startswith(UPSTREAM) for s in specs)
        return rows

    def select(self, states: set[str], ready_only: bool = False) -> list[RunSpec]:
        return [s for s in self.specs
                if self.states[s.run_key].state in states and not (ready_only and self.blocked(s))]

    def units(self, states: set[str] | frozenset[str] = TO_RUN, ready_only: bool = True) -> list[WorkUnit]:
        """Work units for the runs in ``states`` (default: those a sweep runs), linear probes grouped per
        extraction: a linear unit holds the runs of one extraction key, so it extracts features once.

        ``ready_only=False`` also plans the runs that cannot start yet (for --dry-run counts).
        """
        return [WorkUnit(group[0].mode, tuple(group), tuple(sorted({self.waits_for(s) for s in group} - {""})))
                for group in group_by_extraction(self.select(set(states), ready_only))]


def plan_sweep(sweep: SweepSpec, out: str | Path, *, data_root: str | Path | None = None,
               checkpoint_dir: str | Path | None = None, check_data: bool = True,
               upstream_submitted: dict[str, str] | None = None, max_runs: int | None = None) -> Plan:
    """Resolve every checkpoint of ``sweep`` (a file on disk, found by registry or path) and every run's state.

    Checkpoints that are not on disk are reported in ``Plan.unresolved`` with the reason (and where to get
    them); their runs are counted but have no key yet. Those an upstream unit of the sweep makes are planned
    under a placeholder (see the module docstring) and wait for its job. Planning is pure: it reads the
    registry, the disk and the results root and changes nothing (the upstream stage makes what is missing:
    ``dispatch.stages``). ``check_data=False`` leaves out the check of the tasks' data (``status`` needs no
    data: run keys do not depend on it). ``upstream_submitted``: upstream units this command has just
    submitted (unit name → job id). A grid of more than ``max_runs`` runs (default ``MAX_RUNS``) is refused before
    it is expanded (``check_grid_size``).
    """
    check_grid_size(sweep, max_runs)
    out = Path(out)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else (Path(sweep.checkpoint_dir).expanduser()
                                                                   if sweep.checkpoint_dir else None)
    notes: list[str] = []
    upstream = plan_upstream(sweep, out, upstream_submitted, notes)
    refs: dict[CheckpointEntry, CheckpointRef] = {}
    unresolved: dict[CheckpointEntry, str] = {}
    for entry in sweep.checkpoints:
        product = upstream.binding.get(entry)
        try:
            if product and upstream.states[upstream.unit_of(product).name].state != DONE:
                refs[entry] = _waiting_ref(entry, upstream.unit_of(product).arch, product)
            else:
                refs[entry] = _resolve(entry, checkpoint_dir)
        except TransferbenchError as exc:
            unresolved[entry] = str(exc)
    for entry in unresolved:  # planned under a placeholder identity, so counts and jobs are known before download
        refs[entry] = CheckpointRef(entry.method, entry.sparsity, entry.arch or "?", f"{UNRESOLVED}{entry.label}")
    specs = _grid(sweep, refs)
    keys = [s.run_key for s in specs]
    if len(set(keys)) != len(keys):
        raise TransferbenchError(f"sweep {sweep.source}: two grid points resolve to the same run (a checkpoint "
                                 "file listed twice under different names?)")
    states = run_states(out, keys, notes=notes)
    _adopt_placeholder_states(states, specs, refs, upstream, out)
    root = data_root if data_root is not None else sweep.data_root
    missing_data = _check_data(sweep.tasks, root) if check_data else {}
    return Plan(sweep, out, specs, states, unresolved, missing_data, notes, upstream)


def check_grid_size(sweep: SweepSpec, max_runs: int | None = None) -> int:
    """The number of runs in ``sweep``'s grid (the product of its axes, nothing expanded), or a one-line error when
    it exceeds ``max_runs`` (default ``MAX_RUNS``)."""
    max_runs = MAX_RUNS if max_runs is None else max_runs
    total = sum(sweep.grid_size(mode) for mode in sweep.modes)
    if total > max_runs:
        raise TransferbenchError(f"sweep {sweep.source}: its grid has {total} runs, more than the cap of {max_runs}; "
                                 f"narrow it (--only, fewer seeds, tasks or checkpoints) or pass --max-runs {total}")
    return total


def _grid(sweep: SweepSpec, refs: dict[CheckpointEntry, CheckpointRef]) -> list[RunSpec]:
    specs: list[RunSpec] = []
    for mode in sweep.modes:
        solvers = sweep.solvers if mode == "linear" else (None,)
        for ref in refs.values():
            for task in sweep.tasks:
                for solver, size in itertools.product(solvers, sweep.train_sizes):
                    overrides = {**sweep.overrides[mode], **({"solver": solver} if solver else {}),
                                 **({"train_size": size} if size else {})}
                    template = make_spec(task, mode, sweep.seeds[mode][0], ref, overrides)
                    specs.extend(replace(template, seed=seed) for seed in sweep.seeds[mode])
    return specs


def _waiting_ref(entry: CheckpointEntry, arch: str, product: str) -> CheckpointRef:
    return CheckpointRef(entry.method, entry.sparsity, arch, f"{UPSTREAM}{product}")


def _adopt_placeholder_states(states: dict[str, RunState], specs: list[RunSpec],
                              refs: dict[CheckpointEntry, CheckpointRef], upstream: UpstreamPlan, out: Path) -> None:
    """A run whose checkpoint now exists but which has no trace under its real key takes the state of its
    placeholder key: the job submitted while the checkpoint was being made (queued, or lost if it ended)."""
    waiting = {refs[e]: _waiting_ref(e, refs[e].arch, p) for e, p in upstream.binding.items()
               if e in refs and not refs[e].identity.startswith((UPSTREAM, UNRESOLVED))}
    placeholders = {s.run_key: replace(s, checkpoint=waiting[s.checkpoint]).run_key for s in specs
                    if s.checkpoint in waiting and states[s.run_key].state == MISSING}
    if not placeholders:
        return
    earlier = run_states(out, list(placeholders.values()))
    for key, placeholder in placeholders.items():
        if earlier[placeholder].state != MISSING:
            state = earlier[placeholder]
            states[key] = replace(state, detail=f"{state.detail} (submitted before its checkpoint existed)")


def resolve_waiting(specs: tuple[RunSpec, ...], checkpoint_dir: Path | None = None) -> tuple[RunSpec, ...]:
    """The specs with their placeholder checkpoints (``upstream:<name>``) resolved to the registered files: what
    a job submitted before its upstream job finished does when it starts."""
    return tuple(replace(s, checkpoint=_registered_ref(s.checkpoint.identity[len(UPSTREAM):], checkpoint_dir))
                 if s.checkpoint.identity.startswith(UPSTREAM) else s for s in specs)


def _registered_ref(name: str, checkpoint_dir: Path | None) -> CheckpointRef:
    """The registered checkpoint called ``name`` (an upstream unit's product; several seeds of one method and
    sparsity are told apart by name, not by method and sparsity), identified as resolve_checkpoint does."""
    spec = named_checkpoint(name)
    if spec is None:
        raise TransferbenchError(f"checkpoint {name} is not registered: its upstream job has not made it (see "
                                 "`transferbench status`)")
    return registered_ref(spec, checkpoint_dir)


def _resolve(entry: CheckpointEntry, checkpoint_dir: Path | None) -> CheckpointRef:
    if entry.path:
        return resolve_checkpoint(entry.method, entry.sparsity, entry.arch, entry.path)
    if entry.upstream:
        return _registered_ref(entry.upstream, checkpoint_dir)
    try:
        return resolve_checkpoint(entry.method, entry.sparsity, entry.arch, None, checkpoint_dir)
    except TransferbenchError:
        if entry.arch != MINI_ARCH:
            raise
        raise TransferbenchError("not trained yet; the sweep's upstream stage trains it (small_cpu recipe, seconds "
                                 "to minutes on a CPU)") from None


def _check_data(tasks: tuple[str, ...], data_root: str | Path | None) -> dict[str, str]:
    """Tasks whose data is not where the jobs will look (checked on the submitting node: same shared disk)."""
    problems = {}
    for name in tasks:
        task = get_task(name)
        if task.builtin is not None:  # a mini-task's data is generated; a paper or study task's must be there
            continue
        if data_root is None:
            problems[name] = "no data root (--data-root, or data_root: in the sweep)"
            continue
        try:
            detect_layout(task, Path(data_root).expanduser())
        except TransferbenchError as exc:
            problems[name] = str(exc)
    return problems
