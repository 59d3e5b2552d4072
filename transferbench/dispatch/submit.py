"""Send work units to an executor: ``debug`` (this process), ``local`` (subprocesses) or ``slurm`` (job arrays).

``local`` and ``slurm`` go through ``submitit.AutoExecutor(folder, cluster=...)``; SLURM submissions are
arrays of at most ``max_array_size`` tasks (submitit does not split arrays itself), each recorded in
``<out>/jobs/ledger.jsonl`` so that ``status`` and the next ``sweep`` know what is queued without asking
``sacct``. ``debug`` is a loop of our own (see ``_run_here``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import submitit
import torch
from submitit.core.utils import FailedJobError, FailedSubmissionError

from ..context import RunContext, default_workers
from ..errors import TransferbenchError
from ..progress import progress
from ..store import append_ledger, check_locking, command_error_line, error_line, ledger_path
from .jobs import SweepJob, execute_unit
from .plan import WorkUnit
from .profiles import Profile
from .sweep import EXECUTORS

log = logging.getLogger("transferbench")


@dataclass
class Submission:
    executor: str
    jobs: list[dict] = field(default_factory=list)  # ledger entries (slurm, local)
    arrays: list[str] = field(default_factory=list)  # SLURM array job ids
    failed: list[tuple[str, str]] = field(default_factory=list)  # (unit, first error line), debug/local only


def job_folder(out: Path) -> Path:
    return Path(out) / "jobs" / "%j"


def chunks(units: list[WorkUnit], size: int) -> Iterator[list[WorkUnit]]:
    for start in range(0, len(units), size):
        yield units[start:start + size]


@dataclass(frozen=True)
class ArrayPlan:
    """One sbatch submission: an array of ``units`` of one mode that wait for the same upstream jobs (a plain
    job when there is one unit)."""

    mode: str
    units: list[WorkUnit]
    parallelism: int  # the array's %N
    after: tuple[str, ...] = ()  # upstream job ids (afterok)


def plan_arrays(units: list[WorkUnit], profile: Profile) -> list[ArrayPlan]:
    """The submissions of one sweep command, per mode and upstream dependency, at most ``max_array_size`` units
    each (an array has one set of sbatch options, its dependency included).

    SLURM's ``%N`` throttles one array, so ``array_parallelism`` is split across the arrays submitted together
    to keep the sweep at that many running jobs (see ``split_parallelism``).
    """
    groups: dict[tuple[str, tuple[str, ...]], list[WorkUnit]] = {}
    for unit in units:
        groups.setdefault((unit.mode, unit.after), []).append(unit)
    arrays = [(mode, after, chunk) for (mode, after), of_group in groups.items()
              for chunk in chunks(of_group, profile.max_array_size)]
    shares = split_parallelism([len(chunk) for _, _, chunk in arrays], profile.array_parallelism)
    return [ArrayPlan(mode, chunk, share, after) for (mode, after, chunk), share in zip(arrays, shares, strict=True)]


def dependency_parameters(after: tuple[str, ...], profile: Profile) -> dict:
    """``update_parameters`` keywords that make a job wait for ``after`` (SLURM ``afterok``), or wait for nothing.
    With ``kill-on-invalid-dep`` SLURM cancels the waiting jobs when an upstream job fails, instead of keeping
    them pending for ever; the next sweep sees them gone and submits them again with the upstream unit."""
    extra = dict(profile.sbatch)
    if after:
        extra["kill-on-invalid-dep"] = "yes"
    return {"slurm_dependency": f"afterok:{':'.join(after)}" if after else None,
            "slurm_additional_parameters": extra}


def split_parallelism(sizes: list[int], total: int) -> list[int]:
    """Running tasks allowed per array so that all of them together stay within ``total``.

    Small arrays take what they can use (never more than their size) and leave the rest to the bigger ones;
    of equal arrays, the first submitted (which start first) get the remainder. Every array gets at least one,
    so with more arrays than ``total`` the sweep runs one job per array.
    """
    shares = [0] * len(sizes)
    left = total
    by_size = sorted(range(len(sizes)), key=lambda i: (sizes[i], -i))
    for done, i in enumerate(by_size):
        shares[i] = max(1, min(sizes[i], left // (len(sizes) - done)))
        left -= shares[i]
    return shares


def by_mode(units: list[WorkUnit]) -> dict[str, list[WorkUnit]]:
    modes: dict[str, list[WorkUnit]] = {}
    for unit in units:
        modes.setdefault(unit.mode, []).append(unit)
    return modes


def job_name(sweep: str, mode: str) -> str:
    return f"tb-{sweep}-{mode}"


def submit_units(units: list[WorkUnit], ctx: RunContext, executor: str, profile: Profile, sweep: str,
                 parallel: int = 1, workers: int | None = None) -> Submission:
    """Run or submit ``units``. ``workers`` (--workers) sets the data-loading workers per job; without it SLURM
    jobs use the profile's ``cpus_per_task - 1``, local jobs their share of this allocation's cores and debug jobs
    ``ctx.num_workers``."""
    if workers is None:  # the profile's cores are those of a SLURM allocation, not of this machine
        workers = {"slurm": profile.workers, "local": default_workers(parallel)}.get(executor, ctx.num_workers)
    ctx = replace(ctx, num_workers=workers)
    check_locking(ctx.results)  # every executor's jobs lock their runs: fail here once, not in each job
    if executor == "debug":
        return _run_here(units, ctx)
    if executor == "local":
        return _run_local(units, ctx, profile, sweep, parallel)
    if executor == "slurm":
        return _submit_slurm(units, ctx, profile, sweep)
    raise TransferbenchError(f"--executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")


def _run_here(units: list[WorkUnit], ctx: RunContext) -> Submission:
    """Each unit in this process, one after the other; a failed unit is recorded and the sweep goes on.

    Not submitit's debug executor: it runs a job only when its result is asked for and opens ``pdb`` on the
    first exception, which would stop an unattended sweep at its first failed unit.
    """
    result = Submission("debug")
    for unit in progress(units, desc="sweep", unit="job"):
        try:
            execute_unit(unit, ctx, job_id="debug")
        except Exception as exc:  # recorded in failures/ by execute_unit; the sweep goes on
            result.failed.append((unit.name, error_line(exc)))
    return result


def _run_local(units: list[WorkUnit], ctx: RunContext, profile: Profile, sweep: str, parallel: int) -> Submission:
    """One subprocess per unit (submitit's local executor), at most ``parallel`` at a time; waits for all.

    Each job sees one GPU (``CUDA_VISIBLE_DEVICES``), taken round-robin from ``local_gpus``; submitit would
    otherwise hide every GPU from its jobs (it sets the variable to its ``gpus_per_node``, 0 by default).
    """
    # submitit's LocalExecutor itself: AutoExecutor does not pass ``visible_gpus`` on
    executor = submitit.LocalExecutor(folder=job_folder(ctx.results), max_num_timeout=profile.max_requeues)
    gpus = local_gpus(ctx.device)
    result = Submission("local")
    pending, running = list(units), []
    bar = progress(range(len(units)), desc="sweep", unit="job")
    bar_iter = iter(bar)
    while pending or running:
        while pending and len(running) < max(1, parallel):
            unit = pending.pop(0)
            gpu = gpus[len(result.jobs) % len(gpus)] if gpus else None
            executor.update_parameters(timeout_min=profile.time_min[unit.mode], gpus_per_node=0 if gpu is None else 1,
                                       visible_gpus=() if gpu is None else (gpu,))
            # the job's only GPU is its cuda:0, whatever index --device named here
            job = executor.submit(SweepJob(unit, ctx if gpu is None else replace(ctx, device="cuda")))
            entry = ledger_entry(unit.name, unit.mode, unit.keys, job, "local", sweep)
            if gpu is not None:
                entry["gpu"] = gpu
            log.info("local job %s: %s on %s", job.job_id, unit.name, "CPU" if gpu is None else f"GPU {gpu}")
            append_ledger(ctx.results, [entry])
            result.jobs.append(entry)
            running.append((unit, job))
        time.sleep(0.2)
        for unit, job in [r for r in running if r[1].done()]:
            running.remove((unit, job))
            next(bar_iter, None)
            exc = job.exception()
            if exc is not None:
                result.failed.append((unit.name, error_line(exc)))
    remove_placeholder_folder(job_folder(ctx.results))
    return result


def remove_placeholder_folder(folder: Path) -> None:
    """Remove the empty folder named literally ``%j`` that submitit's local job controller creates from the
    folder pattern (each job's files go to ``jobs/<pid>/``); a non-empty one is left alone."""
    with contextlib.suppress(OSError):
        Path(folder).rmdir()


def local_gpus(device: str) -> list[int]:
    """The GPUs that local jobs share, one per job: none for ``--device cpu``, the one ``cuda:N`` names, else every
    visible GPU, as this process's ``CUDA_VISIBLE_DEVICES`` numbers them (when set) or torch counts them."""
    if device == "cpu":
        return []
    count = torch.cuda.device_count()  # counts without creating a CUDA context in this process
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in listed.split(",") if n.strip()] if listed is not None else list(map(str, range(count)))
    names = names[:count]
    if not all(n.isdigit() for n in names):
        raise TransferbenchError(f"--executor local: CUDA_VISIBLE_DEVICES={listed} names GPUs by UUID; local jobs "
                                 "get their GPU by index: set it to indices (0,1,...) or use --device cpu")
    index = torch.device(device).index if device.startswith("cuda") else None
    if index is not None and index >= len(names):
        raise TransferbenchError(f"--device {device} requested but {len(names)} CUDA GPU(s) are visible; use a "
                                 "visible index, or --device cuda to spread the jobs over all of them")
    return [int(n) for n in (names if index is None else names[index:index + 1])]


def slurm_executor(folder: Path, profile: Profile) -> submitit.AutoExecutor:
    """submitit's SLURM executor, its job logs under ``folder``, requeued at most ``profile.max_requeues`` times
    on time-outs; one line where this machine cannot submit (no ``srun``)."""
    try:
        return submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=profile.max_requeues)
    except RuntimeError:  # submitit's SlurmExecutor refuses to exist without srun
        raise TransferbenchError("--executor slurm: `srun` is not on PATH; submit from a SLURM login node, or use "
                                 "--executor local or debug") from None


def _submit_slurm(units: list[WorkUnit], ctx: RunContext, profile: Profile, sweep: str) -> Submission:
    executor = slurm_executor(job_folder(ctx.results), profile)
    result = Submission("slurm")
    arrays = plan_arrays(units, profile)
    for number, planned in enumerate(arrays, 1):
        executor.update_parameters(**{**profile.executor_parameters(planned.mode, job_name(sweep, planned.mode),
                                                                    array_parallelism=planned.parallelism),
                                      **dependency_parameters(planned.after, profile)})
        try:
            # submitit echoes a failed sbatch's stderr; it is in the exception, and the user gets one line
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(SweepJob(unit, ctx)) for unit in planned.units]
        except (FailedJobError, FailedSubmissionError, OSError) as exc:
            raise TransferbenchError(_sbatch_failed(exc, number, arrays, result, ctx.results)) from None
        entries = [{**ledger_entry(unit.name, unit.mode, unit.keys, job, "slurm", sweep),
                    **({"after": list(unit.after)} if unit.after else {})}
                   for unit, job in zip(planned.units, jobs, strict=True)]
        append_ledger(ctx.results, entries)
        result.jobs.extend(entries)
        array = str(jobs[0].job_id).split("_")[0]
        result.arrays.append(array)
        log.info("submitted %s array %s: %d %s job(s)%s", sweep, array, len(planned.units), planned.mode,
                 f" after upstream job(s) {', '.join(planned.after)}" if planned.after else "")
    return result


def _sbatch_failed(exc: BaseException, number: int, arrays: list[ArrayPlan], result: Submission, out: Path) -> str:
    planned = arrays[number - 1]
    reason = command_error_line(str(exc), type(exc).__name__)
    message = (f"sbatch failed on submission {number} of {len(arrays)} ({planned.mode}, {len(planned.units)} "
               f"job(s), first {planned.units[0].name}): {reason}; ")
    if result.arrays:
        message += (f"already submitted and recorded in {ledger_path(out)}: array(s) {', '.join(result.arrays)} "
                    f"({len(result.jobs)} job(s)); ")
    else:
        message += "nothing was submitted; "
    return message + "fix the cause and run the same sweep command again: it submits only what is not queued"


def ledger_entry(name: str, mode: str, keys: tuple[str, ...] | list[str], job: submitit.Job, executor: str,
                 sweep: str) -> dict:
    """The ledger line of one submitted job (a transfer unit, or an upstream unit: mode "upstream")."""
    # host: where the command ran, which for local jobs is where their pid means something (see state._liveness)
    return {
        "sweep": sweep, "unit": name, "mode": mode, "run_keys": list(keys),
        "job_id": str(job.job_id), "executor": executor, "host": socket.gethostname(),
        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
    }


class _SrunlessSlurmExecutor(submitit.SlurmExecutor):
    """A SlurmExecutor that can be built without ``srun``: it only renders sbatch scripts."""

    @classmethod
    def affinity(cls) -> int:
        return 1


class _PreviewExecutor(submitit.AutoExecutor):
    """``AutoExecutor(cluster="slurm")`` for --dry-run on a machine without ``srun``: the same parameter
    translation as a submission (AutoExecutor's own), around a SlurmExecutor that only renders the script.

    AutoExecutor has no hook for that, so its inner executor is swapped after construction; the fake-SLURM test
    compares this preview with the script a submission hands to sbatch, which catches a submitit that changes this.
    """

    def __init__(self, folder: Path, max_requeues: int) -> None:
        super().__init__(folder, cluster="debug")  # the one executor that can be built anywhere
        self.cluster = "slurm"
        self._executor = _SrunlessSlurmExecutor(folder, max_num_timeout=max_requeues)
        self.parameters = self._executor.parameters

    def script(self, array_size: int) -> str:
        inner = self._executor
        if array_size > 1:
            inner.parameters["map_count"] = array_size  # as SlurmExecutor does for the arrays it submits
        return inner._make_submission_file_text(inner._submitit_command_str, "preview")


def sbatch_preview(profile: Profile, mode: str, array_size: int, out: Path, sweep: str,
                   array_parallelism: int | None = None, after: tuple[str, ...] = ()) -> str:
    """The sbatch script submitit will write for an array of ``array_size`` ``mode`` jobs (for --dry-run);
    ``array_parallelism`` is the array's share (``plan_arrays``), by default the profile's; ``after``: the
    upstream jobs it waits for."""
    params = {**profile.executor_parameters(mode, job_name(sweep, mode), array_parallelism),
              **dependency_parameters(after, profile)}
    return render_sbatch(params, job_folder(out), profile.max_requeues, array_size)


def render_sbatch(params: dict, folder: Path, max_requeues: int, array_size: int = 1) -> str:
    """The sbatch script of a submission with these ``update_parameters`` keywords, without submitting it."""
    executor = _PreviewExecutor(folder, max_requeues)
    executor.update_parameters(**params)
    return executor.script(array_size)
