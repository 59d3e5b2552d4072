"""Sweeps: plan a grid of runs, skip the finished ones, and run the rest here or as SLURM job arrays.

    from transferbench.dispatch import load_sweep, plan_sweep, load_profile, submit_units

    plan = plan_sweep(load_sweep("paper_resnet50_linear"), "results", data_root="/data")
    submit_units(plan.units(), RunContext(results=Path("results")), "slurm", load_profile("default"), "paper")
"""

from ..store import STATES, RunState, run_states
from .plan import Plan, WorkUnit, plan_sweep
from .profiles import Profile, load_profile, packaged_profiles
from .submit import Submission, sbatch_preview, submit_units
from .sweep import CheckpointEntry, SweepSpec, load_sweep, packaged_sweeps

__all__ = [
    "STATES",
    "CheckpointEntry",
    "Plan",
    "Profile",
    "RunState",
    "Submission",
    "SweepSpec",
    "WorkUnit",
    "load_profile",
    "load_sweep",
    "packaged_profiles",
    "packaged_sweeps",
    "plan_sweep",
    "run_states",
    "sbatch_preview",
    "submit_units",
]
