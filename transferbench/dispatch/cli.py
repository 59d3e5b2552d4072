"""The sweep commands of `transferbench`: sweep (plan and submit) and status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..context import RunContext
from ..errors import TransferbenchError
from ..store import FAILED, LOST, STATES, TO_RUN
from .plan import Plan, WorkUnit, plan_sweep
from .profiles import Profile, load_profile
from .stages import missing_upstream, prepare_upstream
from .submit import EXECUTORS, ArrayPlan, by_mode, plan_arrays, sbatch_preview, submit_units
from .sweep import load_sweep, packaged_sweeps


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.spec)
    profile = load_profile(args.profile)
    out = args.out.resolve()  # job scripts and the ledger name absolute paths: jobs start elsewhere
    if args.dry_run:
        for entry in missing_upstream(sweep):
            print(f"upstream stage: would train {entry.label} (small_cpu recipe) before the transfer jobs")
    else:
        prepare_upstream(sweep)  # an explicit stage before planning the jobs: planning itself changes nothing
    plan = plan_sweep(sweep, out, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir)
    wanted = {FAILED} if args.retry_failed else set(TO_RUN)
    units = plan.units(wanted, ready_only=False)
    ready = plan.units(wanted)
    print(f"sweep {sweep.name} ({sweep.source}) -> {out}")
    _print_frame(pd.DataFrame(plan.counts()).set_index("mode"))
    linear = [u for u in units if u.mode == "linear"]
    print(f"\nto {'retry' if args.retry_failed else 'run'}: {sum(len(u.specs) for u in units)} run(s) in "
          f"{len(units)} job(s) ({len(ready)} ready now); the {sum(len(u.specs) for u in linear)} linear run(s) "
          f"need {len(linear)} feature extraction(s)")  # one per linear job (Plan.units)
    _print_problems(plan)
    if args.dry_run:
        # the jobs the same command without --dry-run would submit, so the preview is what gets submitted
        _print_jobs(ready if args.only_ready else units, args, profile, out, sweep.name)
        return 0
    if len(ready) < len(units) and not args.only_ready:
        first = next(iter(plan.unresolved.values()), None) or next(iter(plan.missing_data.values()))
        raise TransferbenchError(f"{len(plan.unresolved)} checkpoint(s) missing and {len(plan.missing_data)} task(s) "
                                 f"without data (first: {first}); fix that, or pass --only-ready to submit the rest")
    units = ready
    if not units:
        print("nothing to do")
        return 0
    ctx = RunContext(results=out, data_root=args.data_root or _path(sweep.data_root), device=args.device,
                     checkpoint_dir=args.checkpoint_dir or _path(sweep.checkpoint_dir),
                     allow_sparsity_gap=args.allow_sparsity_gap, compile=args.compile,
                     cudnn_benchmark=args.cudnn_benchmark)
    submission = submit_units(units, ctx, args.executor, profile, sweep.name, parallel=args.parallel,
                              workers=args.workers)
    if submission.arrays:
        print(f"submitted {len(submission.jobs)} job(s) as array(s) {', '.join(submission.arrays)}; "
              f"follow them with `transferbench status {args.spec} --out {out}`")
    for unit, error in submission.failed:
        print(f"failed: {unit}: {error}")
    if args.executor != "slurm":
        states = plan_sweep(sweep, out, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir).counts()
        _print_frame(pd.DataFrame(states).set_index("mode"))
    return 1 if submission.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.spec)
    # states come from the results root; the data is checked only where a data root is given (what would block)
    plan = plan_sweep(sweep, args.out, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir,
                      check_data=args.data_root is not None or sweep.data_root is not None)
    table = status_table(plan)
    if args.json:
        print(json.dumps({"sweep": sweep.name, "totals": plan.counts(), "notes": plan.notes,
                          "runs": table.to_dict(orient="records")}, indent=1))
        return 0
    print(f"sweep {sweep.name} -> {args.out}")
    if not table.empty:
        for by in (["mode", "method", "sparsity"], ["mode", "task"]):
            counts = table.pivot_table(index=by, columns="state", values="run_key", aggfunc="count", fill_value=0)
            _print_frame(counts.reindex(columns=list(STATES), fill_value=0))
            print()
    _print_frame(pd.DataFrame(plan.counts()).set_index("mode"))
    failures = table[table.state == FAILED]
    if len(failures):
        print(f"\nfailed runs ({len(failures)}; resubmit them with `transferbench sweep {args.spec} --retry-failed`):")
        for row in failures.head(args.failures).itertuples():
            print(f"  {row.run_key} [job {row.job_id or '?'}]: {row.detail}")
        _print_more(len(failures), args.failures)
    lost = table[table.state == LOST]
    for row in lost.head(args.failures).itertuples():
        print(f"  lost {row.run_key}: {row.detail}")
    _print_more(len(lost), args.failures)
    _print_problems(plan)
    return 0


def _print_more(count: int, shown: int) -> None:
    if count > shown:
        print(f"  ... and {count - shown} more (--failures N shows more, --json all)")


def status_table(plan: Plan) -> pd.DataFrame:
    rows = [{"run_key": s.run_key, "mode": s.mode, "task": s.task, "method": s.checkpoint.method,
             "sparsity": round(s.checkpoint.sparsity * 100, 2), "seed": s.seed,
             "state": plan.states[s.run_key].state, "detail": plan.states[s.run_key].detail,
             "job_id": plan.states[s.run_key].job_id} for s in plan.specs]
    return pd.DataFrame(rows, columns=["run_key", "mode", "task", "method", "sparsity", "seed", "state", "detail",
                                       "job_id"])


def _print_jobs(units: list[WorkUnit], args: argparse.Namespace, profile: Profile, out: Path, sweep: str) -> None:
    """The jobs of a dry run as the executor will run them: arrays and sbatch scripts only for SLURM (local
    jobs know no arrays, and their parallelism is --parallel, not the profile's)."""
    if args.executor != "slurm":
        for mode, of_mode in by_mode(units).items():
            how = (f"as subprocesses here, at most {max(1, args.parallel)} at once (--parallel)"
                   if args.executor == "local" else "one after the other in this process")
            print(f"\n{mode}: {len(of_mode)} job(s) {how}")
        return
    arrays = plan_arrays(units, profile)
    for mode in dict.fromkeys(a.mode for a in arrays):
        of_mode = [a for a in arrays if a.mode == mode]
        print(f"\n{mode}: {sum(len(a.units) for a in of_mode)} job(s) as {len(of_mode)} array(s) of "
              f"{', '.join(str(len(a.units)) for a in of_mode)}, at most "
              f"{' + '.join(str(a.parallelism) for a in of_mode)} running at once")
        print(sbatch_preview(profile, mode, len(of_mode[0].units), out, sweep, of_mode[0].parallelism))
    if arrays:
        _print_parallelism(arrays, profile)


def _print_parallelism(arrays: list[ArrayPlan], profile: Profile) -> None:
    running = sum(a.parallelism for a in arrays)
    why = (f"array_parallelism {profile.array_parallelism} of profile {profile.name}, split across "
           f"{len(arrays)} submission(s)")
    if running > profile.array_parallelism:
        why += ", at least one each"
    print(f"\nall together: at most {running} job(s) running at once ({why}); another sweep command's jobs "
          "come on top")


def _print_problems(plan: Plan, limit: int = 3) -> None:
    """What blocks runs, a few lines each (20 missing checkpoints would otherwise bury the counts), and what
    limits the states shown."""
    for note in plan.notes:
        print(f"note: {note}")
    for title, problems in (("checkpoint not on disk", {e.label: r for e, r in plan.unresolved.items()}),
                            ("data not found", plan.missing_data)):
        for name, reason in list(problems.items())[:limit]:
            print(f"{title}: {name}: {reason}")
        if len(problems) > limit:
            print(f"{title}: ... and {len(problems) - limit} more ({', '.join(list(problems)[limit:])})")


def _print_frame(frame: pd.DataFrame) -> None:
    print(frame.to_string())


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def add_dispatch_commands(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="plan a sweep, skip finished runs, submit the rest (debug, local or SLURM)",
                           description=f"SPEC is a sweep .yaml file or one of: {', '.join(packaged_sweeps())}")
    sweep.add_argument("spec", help="sweep .yaml or a packaged sweep name")
    sweep.add_argument("--executor", choices=EXECUTORS, default="slurm",
                       help="slurm (job arrays through submitit), local (subprocesses here) or debug (in this "
                            "process); default slurm")
    sweep.add_argument("--profile", default="default", help="cluster profile: slurm/<name>.yaml or a .yaml path")
    sweep.add_argument("--dry-run", action="store_true", help="print counts, jobs, sbatch script; submit nothing")
    sweep.add_argument("--retry-failed", action="store_true", help="resubmit only the runs that failed")
    sweep.add_argument("--only-ready", action="store_true",
                       help="submit what can run now, leaving out missing checkpoints and tasks without data")
    sweep.add_argument("--parallel", type=int, default=1, help="local executor: jobs at once (default 1)")
    sweep.add_argument("--device", default="auto", help="auto, cpu, cuda (jobs pick their visible GPU)")
    sweep.add_argument("--workers", type=int,
                       help="data-loading workers per job (default: the profile's cpus_per_task - 1 under slurm, "
                            "min(4, this machine's cores) under local and debug)")
    sweep.add_argument("--allow-sparsity-gap", action="store_true", help="as for `transferbench run`")
    sweep.add_argument("--compile", action="store_true", help="as for `transferbench run`: torch.compile in every job")
    sweep.add_argument("--cudnn-benchmark", action="store_true",
                       help="as for `transferbench run`: cuDNN autotuning in every job (GPU; resumes no longer "
                            "bit-identical)")
    _common(sweep)
    sweep.set_defaults(func=cmd_sweep)

    status = sub.add_parser("status", help="done / running / queued / failed / missing runs of a sweep")
    status.add_argument("spec", help="sweep .yaml or a packaged sweep name")
    status.add_argument("--failures", type=int, default=20,
                        help="list at most this many failed and lost runs each (default 20)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _common(status)
    status.set_defaults(func=cmd_status)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("results"), help="results root (default results/)")
    parser.add_argument("--data-root", type=Path, help="folder holding the datasets (default: the sweep's data_root)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="registered checkpoints (default: the sweep's, $TRANSFERBENCH_CHECKPOINTS or "
                             "~/.cache/transferbench/checkpoints)")
