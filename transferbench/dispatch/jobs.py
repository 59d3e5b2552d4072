"""What a sweep job executes: one work unit, idempotently, with claims, heartbeats and failure records."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import submitit
import torch

from ..context import RunContext
from ..runner import run
from ..store import claim_runs, existing_record, write_failure
from .plan import WorkUnit, resolve_waiting

log = logging.getLogger("transferbench")


def current_job_id() -> str:
    """``<array job>_<task>`` or the job id under SLURM, the pid elsewhere (LocalExecutor's job id too)."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or str(os.getpid())


def use_allocated_cpus() -> None:
    """Under SLURM, one torch thread per CPU of the task's allocation (``SLURM_CPUS_PER_TASK``): torch would start
    one per core of the node."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        torch.set_num_threads(int(cpus))


def execute_unit(unit: WorkUnit, ctx: RunContext, job_id: str | None = None) -> list[str]:
    """Run the unit's runs that are not done and not running elsewhere; returns the keys completed here.

    A failure is written to ``failures/<key>.json`` for each run of the unit and then re-raised, so the
    scheduler also sees the job fail.
    """
    job_id = job_id or current_job_id()
    try:  # a job submitted while its upstream job was making the checkpoint finds the file now
        unit = replace(unit, specs=resolve_waiting(unit.specs, ctx.checkpoint_dir))
    except Exception as exc:
        for spec in unit.specs:
            write_failure(ctx.results, spec.run_key, exc, job_id)
        raise
    todo = [s for s in unit.specs if ctx.force or existing_record(ctx.results, s.run_key) is None]
    if not todo:
        log.info("job %s: %s already done", job_id, unit.name)
        return []
    with claim_runs([s.run_key for s in todo], ctx.results, job_id) as claimed:
        held = set(claimed)
        # checked again under the lock: a job that finished a run between the check above and the claim has
        # released its lock by now, and running it again would redo hours of work and replace its record
        specs = [s for s in todo
                 if s.run_key in held and (ctx.force or existing_record(ctx.results, s.run_key) is None)]
        if len(held) < len(todo):
            log.warning("job %s: %d run(s) of %s are held by another job; skipping them", job_id,
                        len(todo) - len(held), unit.name)
        if len(specs) < len(held):
            log.info("job %s: %d run(s) of %s were finished by another job meanwhile; skipping them", job_id,
                     len(held) - len(specs), unit.name)
        if not specs:
            return []
        log.info("job %s: %s (%d run(s))", job_id, unit.name, len(specs))
        try:
            run(specs, ctx)
        except Exception as exc:
            for spec in specs:
                if existing_record(ctx.results, spec.run_key) is None:
                    write_failure(ctx.results, spec.run_key, exc, job_id)
            log.error("job %s: %s failed: %s", job_id, unit.name, exc)
            raise
    return [s.run_key for s in specs]


class SweepJob(submitit.helpers.Checkpointable):
    """A unit as a submitit callable. On SLURM's USR2 (time limit or preemption) submitit pickles this object
    and requeues the job; the new run skips finished runs and full fine-tuning resumes after its last epoch."""

    def __init__(self, unit: WorkUnit, ctx: RunContext) -> None:
        self.unit = unit
        self.ctx = replace(ctx, force=False)  # a requeued or repeated job must never redo finished runs

    def __call__(self) -> list[str]:
        from ..progress import setup_logging

        setup_logging(verbose=False)
        use_allocated_cpus()
        return execute_unit(self.unit, self.ctx)
