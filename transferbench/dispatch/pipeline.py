"""What `transferbench sweep` and `transferbench status` do besides printing, as functions a user calls the same
way from Python:

    sweep = load_sweep("mini")
    prepare_upstream(sweep)                          # the upstream stage (planning itself changes nothing)
    plan = plan_sweep(sweep, "results")
    units = units_to_submit(plan)                    # what to run; an error while some cannot start yet
    submit_units(units, sweep_context(sweep, "results"), "debug", load_profile("default"), sweep.name)
    print(status_table(plan_sweep(sweep, "results")))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..context import RunContext
from ..errors import TransferbenchError
from ..store import FAILED, TO_RUN
from .plan import Plan, WorkUnit
from .sweep import SweepSpec


def wanted_states(retry_failed: bool = False) -> set[str]:
    """The run states a sweep submits: those still to run, or with ``retry_failed`` only the failed ones."""
    return {FAILED} if retry_failed else set(TO_RUN)


def units_to_submit(plan: Plan, retry_failed: bool = False, only_ready: bool = False) -> list[WorkUnit]:
    """The work units a sweep submits. Runs that cannot start yet (checkpoint not on disk, task without data)
    are an error naming the first reason, unless ``only_ready`` leaves them out."""
    states = wanted_states(retry_failed)
    ready = plan.units(states)
    if not only_ready and len(ready) < len(plan.units(states, ready_only=False)):
        first = next(iter(plan.unresolved.values()), None) or next(iter(plan.missing_data.values()))
        raise TransferbenchError(f"{len(plan.unresolved)} checkpoint(s) missing and {len(plan.missing_data)} task(s) "
                                 f"without data (first: {first}); fix that, or pass --only-ready to submit the rest")
    return ready


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
