"""Sweeps: plan a grid of runs, skip the finished ones, and run the rest here or as SLURM job arrays.

    from transferbench.dispatch import load_sweep, plan_sweep, load_profile, submit_units

    plan = plan_sweep(load_sweep("paper_resnet50_linear"), "results", data_root="/data")
    submit_units(plan.units(), RunContext(results=Path("results")), "slurm", load_profile("default"), "paper")

A sweep with ``upstream:`` entries has a stage before its transfer jobs (``plan_upstream``, ``upstream_stage``;
``dispatch.pipeline`` shows the order); ``submit_upstream`` sends upstream units to SLURM as DDP jobs.
"""

import typing as _typing

from ..lazy import lazy_package as _lazy_package

# each public name's submodule, imported on first use: `sweep --help` needs neither torch nor submitit
_lazy_package(__name__, {
    "..store": ("STATES", "RunState", "run_states"),
    ".pipeline": ("upstream_stage",),
    ".plan": ("Plan", "WorkUnit", "plan_sweep"),
    ".profiles": ("Profile", "load_profile", "packaged_profiles"),
    ".stages": ("UpstreamPlan", "plan_upstream"),
    ".submit": ("Submission", "sbatch_preview", "submit_units"),
    ".sweep": ("CheckpointEntry", "SweepSpec", "load_sweep", "packaged_sweeps"),
    ".upstream_jobs": ("UpstreamJob", "submit_upstream"),
    ".upstream_spec": ("UpstreamUnit", "make_unit"),
})

if _typing.TYPE_CHECKING:
    from ..store import STATES, RunState, run_states
    from .pipeline import upstream_stage
    from .plan import Plan, WorkUnit, plan_sweep
    from .profiles import Profile, load_profile, packaged_profiles
    from .stages import UpstreamPlan, plan_upstream
    from .submit import Submission, sbatch_preview, submit_units
    from .sweep import CheckpointEntry, SweepSpec, load_sweep, packaged_sweeps
    from .upstream_jobs import UpstreamJob, submit_upstream
    from .upstream_spec import UpstreamUnit, make_unit

__all__ = [
    "STATES",
    "CheckpointEntry",
    "Plan",
    "Profile",
    "RunState",
    "Submission",
    "SweepSpec",
    "UpstreamJob",
    "UpstreamPlan",
    "UpstreamUnit",
    "WorkUnit",
    "load_profile",
    "load_sweep",
    "make_unit",
    "packaged_profiles",
    "packaged_sweeps",
    "plan_sweep",
    "plan_upstream",
    "run_states",
    "sbatch_preview",
    "submit_units",
    "submit_upstream",
    "upstream_stage",
]
