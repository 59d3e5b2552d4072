"""Upstream units as SLURM jobs: one submitit job per unit, ``nodes × tasks_per_node`` processes (one per GPU)
that train together with DDP, requeued on USR2 (time limit or preemption) and resumed from the training's own
per-epoch state.

    transferbench upstream --method acdc --sparsity 0.9 --dataset imagenet --data-root /imagenet \\
        --executor slurm --profile P --gpus 8 --nodes 2

Inside each task ``TorchDistributedEnvironment().export()`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT, from which ``train_upstream`` starts torch.distributed (one process per GPU, the global batch split
across them); it resumes from its own per-epoch state, and the first process registers the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from ..errors import TransferbenchError
from ..progress import setup_logging
from ..store import DONE, QUEUED, RUNNING, append_ledger, check_locking, command_error_line, ledger_path
from .jobs import current_job_id, use_allocated_cpus
from .profiles import JobLayout, Profile, load_profile
from .stages import execute_upstream, upstream_states
from .submit import job_folder, ledger_entry, render_sbatch, slurm_executor
from .upstream_spec import UpstreamUnit, make_unit

log = logging.getLogger("transferbench")


class UpstreamJob(submitit.helpers.Checkpointable):
    """One upstream unit as the callable of every task of a submitit job. On USR2 submitit pickles this object
    (``checkpoint`` returns a DelayedSubmission of it) and requeues the job; the new run resumes from the
    training's last saved epoch, or does nothing when the checkpoint was registered meanwhile."""

    def __init__(self, unit: UpstreamUnit, store: Path, device: str = "auto",
                 train_options: dict[str, Any] | None = None) -> None:
        self.unit = unit
        self.store = store
        self.device = device
        self.train_options = dict(train_options or {})

    def __call__(self) -> list[str]:
        setup_logging(verbose=False)
        # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from SLURM's variables; CUDA_VISIBLE_DEVICES stays
        # as SLURM set it (the node's allocated GPUs, which need not be 0..n-1): train_upstream takes the
        # LOCAL_RANK-th of them
        distributed = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                            overwrite=True)
        use_allocated_cpus()
        log.info("upstream %s: process %d of %d (local %d), master %s:%s", self.unit.name, distributed.rank,
                 distributed.world_size, distributed.local_rank, distributed.master_addr, distributed.master_port)
        return execute_upstream(self.unit, self.store, current_job_id(), self.device, **self.train_options)


def upstream_job_name(unit: UpstreamUnit) -> str:
    return f"tb-upstream-{unit.name}"


def layouts(units: list[UpstreamUnit], profile: Profile) -> dict[str, JobLayout]:
    """Each unit's job size (its own nodes/gpus, else the profile's), checked before anything is submitted."""
    return {u.name: profile.upstream_layout(u.nodes, u.gpus, u.single_process, what=f"upstream {u.name}")
            for u in units}


def upstream_parameters(unit: UpstreamUnit, layout: JobLayout, profile: Profile) -> dict[str, Any]:
    return {**profile.upstream_parameters(layout, upstream_job_name(unit)), "slurm_dependency": None}


def submit_upstream(units: list[UpstreamUnit], store: Path, profile: Profile, sweep: str,
                    device: str = "auto", train_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Submit one SLURM job per unit; returns unit name → job id. Each submission is recorded in the store's
    ledger at once, so a failing sbatch leaves a ledger that says exactly what was submitted."""
    sizes = layouts(units, profile)
    check_locking(store)
    executor = slurm_executor(job_folder(store), profile)
    submitted: dict[str, str] = {}
    for number, unit in enumerate(units, 1):
        executor.update_parameters(**upstream_parameters(unit, sizes[unit.name], profile))
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; it is in the error
                job = executor.submit(UpstreamJob(unit, store, device, train_options))
        except (FailedJobError, FailedSubmissionError, OSError) as exc:
            done = f"already submitted: {', '.join(f'{n} (job {j})' for n, j in submitted.items())}; " \
                if submitted else "nothing was submitted; "
            raise TransferbenchError(
                f"sbatch failed on upstream job {number} of {len(units)} ({unit.name}): "
                f"{command_error_line(str(exc), type(exc).__name__)}; {done}recorded in {ledger_path(store)}; fix "
                "the cause and run the same command again: it submits only what is not queued") from None
        layout = sizes[unit.name]
        append_ledger(store, [{**ledger_entry(unit.name, "upstream", [unit.name], job, "slurm", sweep),
                               "nodes": layout.nodes, "tasks_per_node": layout.tasks_per_node,
                               "gpus_per_node": layout.gpus_per_node}])
        submitted[unit.name] = str(job.job_id)
        log.info("submitted upstream job %s: %s (%s)", job.job_id, unit.name, layout.describe())
    return submitted


def upstream_preview(unit: UpstreamUnit, layout: JobLayout, profile: Profile, store: Path) -> str:
    """The sbatch script of the unit's job (for --dry-run)."""
    return render_sbatch(upstream_parameters(unit, layout, profile), job_folder(store), profile.max_requeues)


# --- `transferbench upstream --executor slurm`: one unit from the command's flags ---


def check_launch_flags(args: argparse.Namespace) -> None:
    """Flags that only make sense together: one line, exit 2, nothing submitted."""
    if args.executor != "slurm":
        raise TransferbenchError("--gpus, --nodes and --profile size a SLURM job: add --executor slurm (on this "
                                 "machine, start several processes with torchrun --nproc-per-node N)")
    if not args.profile:
        raise TransferbenchError("--executor slurm needs --profile NAME|FILE (the cluster profile: slurm/<name>.yaml "
                                 "or a .yaml path)")
    if getattr(args, "force", False):
        raise TransferbenchError("--force with --executor slurm: a requeued job would start its training over; "
                                 "delete the registered checkpoint (or train under another --seed) instead")


def submit_upstream_command(args: argparse.Namespace, options: Any = None) -> int:
    """`transferbench upstream ... --executor slurm`: check the flags, submit one job unless the checkpoint is
    registered or a job of the store's ledger is making it, print what was done. ``options``: the loop's
    switches (``upstream.options.LoopOptions``) as the command would train here."""
    check_launch_flags(args)
    profile = load_profile(args.profile)
    unit = make_unit(args.method, args.sparsity, recipe=args.recipe, seed=args.seed, arch=args.arch,
                     dataset=args.dataset, data_root=args.data_root, source=args.source, nodes=args.nodes,
                     gpus=args.gpus, out_dir=args.out, batch_size=args.batch_size)
    layout = profile.upstream_layout(unit.nodes, unit.gpus, unit.single_process)
    store = unit.folder().resolve()  # jobs start elsewhere: absolute paths
    state = upstream_states([unit], store)[unit.name]
    if state.state in (DONE, QUEUED, RUNNING):
        print(f"{unit.name}: {state.state} ({state.detail}); nothing submitted")
        return 0
    [job_id] = submit_upstream([unit], store, profile, "upstream", args.device,
                               {"options": options, "trackers": args.trackers} if options is not None and not
                               unit.source else None).values()
    print(f"submitted upstream job {job_id}: {unit.label}, {layout.describe()}")
    print(f"logs: {job_folder(store).parent / job_id}; the same command again reports its state and submits "
          "nothing while it is queued or running")
    return 0
