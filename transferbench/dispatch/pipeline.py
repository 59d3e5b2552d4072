"""What `transferbench sweep` and `transferbench status` do besides printing, as functions a user calls the same
way from Python:

    sweep = load_sweep("mini")
    stage = upstream_stage(sweep, "results", "debug", load_profile("default"))  # planning itself changes nothing
    plan = plan_sweep(sweep, "results", upstream_submitted=stage.submitted)
    units = units_to_submit(plan, can_wait=False)    # what to run; an error while some cannot start yet
    submit_units(units, sweep_context(sweep, "results"), "debug", load_profile("default"), sweep.name)
    print(status_table(plan_sweep(sweep, "results")))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..context import RunContext
from ..errors import TransferbenchError
from ..store import FAILED, TO_RUN
from ..vocabulary import format_sparsity
from .plan import UPSTREAM, Plan, WorkUnit
from .profiles import Profile
from .stages import UpstreamPlan, plan_upstream, run_upstream_here, upstream_store
from .sweep import SweepSpec
from .upstream_jobs import submit_upstream


def wanted_states(retry_failed: bool = False) -> set[str]:
    """The run states a sweep submits: those still to run, or with ``retry_failed`` only the failed ones."""
    return {FAILED} if retry_failed else set(TO_RUN)


@dataclass
class StageOutcome:
    """What the upstream stage of one sweep command did."""

    units: list = field(default_factory=list)  # the units it ran or submitted
    submitted: dict[str, str] = field(default_factory=dict)  # unit name → SLURM job id
    failed: list[tuple[str, str]] = field(default_factory=list)  # (unit, first error line), run here only


def upstream_stage(sweep: SweepSpec, results: str | Path, executor: str, profile: Profile,
                   retry_failed: bool = False, device: str = "auto", echo=print,
                   train_options: dict[str, Any] | None = None) -> StageOutcome:
    """The sweep's upstream units that are not done, queued or running: submitted as SLURM jobs (one each, sized by
    the unit or the profile), or made here one after the other (debug, local) before the transfer jobs start.
    ``train_options``: further keywords of ``train_upstream`` (``trackers``)."""
    todo = plan_upstream(sweep, results).to_run(retry_failed)
    if not todo:
        return StageOutcome()
    store = upstream_store(Path(results))
    if executor == "slurm":
        return StageOutcome(todo, submitted=submit_upstream(todo, store, profile, sweep.name, device, train_options))
    return StageOutcome(todo, failed=run_upstream_here(todo, store, device, echo=echo, train_options=train_options))


def units_to_submit(plan: Plan, retry_failed: bool = False, only_ready: bool = False,
                    can_wait: bool = True) -> list[WorkUnit]:
    """The work units a sweep submits. Runs that cannot start yet (checkpoint not on disk, task without data, an
    upstream unit that failed; with ``can_wait`` False also those waiting for an upstream job: only SLURM jobs
    can wait) are an error naming the first reason, unless ``only_ready`` leaves them out."""
    states = wanted_states(retry_failed)
    ready = [u for u in plan.units(states) if can_wait or not u.after]
    planned = plan.units(states, ready_only=False)
    if not only_ready and len(ready) < len(planned):
        waiting = sum(1 for u in planned if u.specs[0].checkpoint.identity.startswith(UPSTREAM) and u not in ready)
        what = f"{len(plan.unresolved)} checkpoint(s) missing and {len(plan.missing_data)} task(s) without data"
        if waiting:
            what += f" and {waiting} job(s) waiting for the upstream stage"
        raise TransferbenchError(f"{what} (first: {_first_reason(plan, planned, ready)}); fix that, or pass "
                                 "--only-ready to submit the rest")
    return ready


def _first_reason(plan: Plan, planned: list[WorkUnit], ready: list[WorkUnit]) -> str:
    if plan.unresolved:
        return next(iter(plan.unresolved.values()))
    if plan.missing_data:
        return next(iter(plan.missing_data.values()))
    unit = next(u for u in planned if u not in ready)
    product = unit.specs[0].checkpoint.identity[len(UPSTREAM):]
    upstream = plan.upstream.unit_of(product) if plan.upstream else None
    state = plan.upstream.states[upstream.name] if plan.upstream and upstream else None
    # without the exception's class: `main` prints what follows the last "TransferbenchError: " of a message
    why = state.reason.replace("TransferbenchError: ", "") if state else "unknown"
    return f"{unit.name} needs {product}, whose upstream unit is {why}"


def upstream_table(upstream: UpstreamPlan) -> pd.DataFrame:
    """One row per upstream unit: what it makes, its state, what the state rests on, and its job."""
    rows = [{"unit": u.name, "method": u.method, "sparsity": "/".join(format_sparsity(s) for s in u.sparsities),
             "seed": u.seed, "recipe": f"from {u.source}" if u.source else u.recipe_name,
             "state": upstream.states[u.name].state, "detail": upstream.states[u.name].detail,
             "job_id": upstream.states[u.name].job_id} for u in upstream.units]
    return pd.DataFrame(rows, columns=["unit", "method", "sparsity", "seed", "recipe", "state", "detail", "job_id"])


def sweep_context(sweep: SweepSpec, results: str | Path, **settings: Any) -> RunContext:
    """The RunContext of a sweep's jobs: ``settings`` (RunContext fields; None means not given) over the sweep's
    ``data_root`` and ``checkpoint_dir``, over RunContext's defaults."""
    from_sweep = {"data_root": _path(sweep.data_root), "checkpoint_dir": _path(sweep.checkpoint_dir)}
    given = {name: value for name, value in settings.items() if value is not None}
    return RunContext(results=Path(results), **{**from_sweep, **given})


def status_table(plan: Plan) -> pd.DataFrame:
    """One row per run of the plan: its key, grid coordinates, state, what the state rests on, and its job."""
    rows = [{"run_key": s.run_key, "mode": s.mode, "task": s.task, "method": s.checkpoint.method,
             "sparsity": round(s.checkpoint.sparsity * 100, 2), "seed": s.seed,
             "state": plan.states[s.run_key].state, "detail": plan.states[s.run_key].detail,
             "job_id": plan.states[s.run_key].job_id} for s in plan.specs]
    return pd.DataFrame(rows, columns=["run_key", "mode", "task", "method", "sparsity", "seed", "state", "detail",
                                       "job_id"])


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None
