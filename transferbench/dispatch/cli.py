"""The sweep commands of `transferbench`: sweep (plan and submit) and status. Each parses its flags, calls the
functions of :mod:`transferbench.dispatch` (see ``dispatch.pipeline``) and prints what they return."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..bounds import WORKERS
from ..cli_flags import add_results_flag
from ..errors import TransferbenchError
from ..store import FAILED, LOST, STATES
from ..tracking import add_log_flag, require_trackers
from .profiles import Profile, default_profile_name, load_profile
from .sweep import EXECUTORS, SweepSpec, load_sweep, packaged_sweeps

if TYPE_CHECKING:  # planning, pandas and submitit load when a command runs, not for `sweep --help`
    import pandas as pd

    from .pipeline import StageOutcome
    from .plan import Plan, WorkUnit
    from .stages import UpstreamPlan
    from .submit import ArrayPlan, Submission


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.spec in SHOW_WORDS:  # `sweep show [NAME|FILE]`, `sweep list`: print, plan nothing
        return cmd_sweep_show(args)
    if args.name is not None:
        raise TransferbenchError(f"sweep {args.spec}: unexpected argument {args.name!r}; one SPEC per command "
                                 "(`transferbench sweep show NAME` prints a sweep)")
    import pandas as pd

    from .pipeline import sweep_context, units_to_submit, upstream_stage
    from .plan import check_grid_size, plan_sweep
    from .submit import submit_units

    trackers = require_trackers(args.trackers)  # --log of a backend not installed: before any work
    WORKERS.check(args.workers, "--workers")
    sweep = load_narrowed(args)
    check_grid_size(sweep, args.max_runs)  # before the upstream stage makes anything
    profile = load_profile(args.profile or sweep.profile or default_profile_name(sweep.tasks, sweep.upstream))
    results = args.results.resolve()  # job scripts and the ledger name absolute paths: jobs start elsewhere
    if args.dry_run:
        return _dry_run(sweep, profile, results, args)
    # the upstream stage first, explicitly: planning itself changes nothing
    stage = upstream_stage(sweep, results, args.executor, profile, args.retry_failed, args.device,
                           train_options={"trackers": trackers} if trackers else None)
    _print_stage(stage)
    plan = plan_sweep(sweep, results, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir,
                      upstream_submitted=stage.submitted, max_runs=args.max_runs)
    _print_plan(plan, results, args.retry_failed)
    units = units_to_submit(plan, args.retry_failed, args.only_ready, can_wait=args.executor == "slurm")
    if not units:
        print("nothing to do")
        return 1 if stage.failed else 0
    ctx = sweep_context(sweep, results, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir,
                        device=args.device, allow_sparsity_gap=args.allow_sparsity_gap, compile=args.compile,
                        cudnn_benchmark=args.cudnn_benchmark, trackers=trackers)
    submission = submit_units(units, ctx, args.executor, profile, sweep.name, parallel=args.parallel,
                              workers=args.workers)
    _print_submission(submission, spec_words(args), results)
    if args.executor != "slurm":  # the jobs ran here: their states now
        _print_frame(pd.DataFrame(plan_sweep(sweep, results, data_root=args.data_root, max_runs=args.max_runs,
                                             checkpoint_dir=args.checkpoint_dir).counts()).set_index("mode"))
    return 1 if submission.failed or stage.failed else 0


def _dry_run(sweep: SweepSpec, profile: Profile, results: Path, args: argparse.Namespace) -> int:
    """Both stages as the same command without --dry-run would run them; nothing is written or submitted."""
    from .pipeline import wanted_states
    from .plan import plan_sweep
    from .stages import plan_upstream

    upstream = plan_upstream(sweep, results)
    todo = upstream.to_run(args.retry_failed)
    _print_upstream_preview(upstream, todo, args.executor, profile, results)
    # the transfer jobs as they would be submitted: those of the units above wait for them
    plan = plan_sweep(sweep, results, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir,
                      upstream_submitted={u.name: f"<{u.name}>" for u in todo}, max_runs=args.max_runs)
    _print_plan(plan, results, args.retry_failed)
    units = plan.units(wanted_states(args.retry_failed), ready_only=args.only_ready)
    _print_jobs(units, args.executor, args.parallel, profile, results, sweep.name)
    return 0


def _print_upstream_preview(upstream: UpstreamPlan, todo: list, executor: str, profile: Profile,
                            results: Path) -> None:
    from .stages import upstream_store
    from .upstream_jobs import layouts, upstream_preview

    if not upstream.units:
        return
    counts = ", ".join(f"{n} {state}" for state, n in upstream.counts().items())
    print(f"upstream stage: {len(upstream.units)} unit(s) ({counts}); {len(todo)} to "
          f"{'submit first' if executor == 'slurm' else 'make here first, one after the other'}")
    sizes = layouts(todo, profile) if executor == "slurm" else {}
    for unit in todo:
        size = f": one SLURM job, {sizes[unit.name].describe()}" if executor == "slurm" else ""
        print(f"  {'prepare' if unit.source else 'train'} {unit.name} ({unit.label}){size}")
    if todo and executor == "slurm":
        print(upstream_preview(todo[0], sizes[todo[0].name], profile, upstream_store(results)))
    print()


def _print_stage(stage: StageOutcome) -> None:
    for name, job_id in stage.submitted.items():
        print(f"upstream stage: submitted {name} as job {job_id}")
    for name, error in stage.failed:
        print(f"upstream stage: failed: {name}: {error}")


def cmd_status(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..vocabulary import format_sparsity
    from .pipeline import status_table, upstream_table
    from .plan import plan_sweep

    sweep = load_narrowed(args)
    # states come from the results root; the data is checked only where a data root is given (what would block)
    plan = plan_sweep(sweep, args.results, data_root=args.data_root, checkpoint_dir=args.checkpoint_dir,
                      max_runs=args.max_runs, check_data=args.data_root is not None or sweep.data_root is not None)
    table = status_table(plan)
    upstream = upstream_table(plan.upstream) if plan.upstream else pd.DataFrame()
    if args.json:
        print(json.dumps({"sweep": sweep.name, "totals": plan.counts(), "notes": plan.notes,
                          "upstream": upstream.to_dict(orient="records"),
                          "runs": table.to_dict(orient="records")}, indent=1))
        return 0
    print(f"sweep {sweep.name} -> {args.results}")
    if not upstream.empty:
        print(f"\nupstream stage ({len(upstream)} unit(s)):")
        _print_frame(upstream.drop(columns=["job_id"]).set_index("unit"))
        print("\ntransfer stage:")
    if not table.empty:
        for by in (["mode", "method", "sparsity"], ["mode", "task"]):
            counts = table.pivot_table(index=by, columns="state", values="run_key", aggfunc="count", fill_value=0)
            if "sparsity" in by:  # printed as everywhere (90%), once sorted by the number
                counts = counts.rename(index=lambda percent: format_sparsity(percent / 100), level="sparsity")
            _print_frame(counts.reindex(columns=list(STATES), fill_value=0))
            print()
    _print_frame(pd.DataFrame(plan.counts()).set_index("mode"))
    failures = table[table.state == FAILED]
    if len(failures):
        print(f"\nfailed runs ({len(failures)}; resubmit them with `transferbench sweep {spec_words(args)} "
              "--retry-failed`):")
        for row in failures.head(args.failures).itertuples():
            print(f"  {row.run_key} [job {row.job_id or '?'}]: {row.detail}")
        _print_more(len(failures), args.failures)
    lost = table[table.state == LOST]
    for row in lost.head(args.failures).itertuples():
        print(f"  lost {row.run_key}: {row.detail}")
    _print_more(len(lost), args.failures)
    _print_problems(plan)
    return 0


def _print_plan(plan: Plan, results: Path, retry_failed: bool) -> None:
    """The grid's counts by state, what the sweep would run (jobs, feature extractions), and what blocks runs."""
    import pandas as pd

    from .pipeline import wanted_states

    states = wanted_states(retry_failed)
    units, ready = plan.units(states, ready_only=False), plan.units(states)
    print(f"sweep {plan.sweep.name} ({plan.sweep.source}) -> {results}")
    _print_frame(pd.DataFrame(plan.counts()).set_index("mode"))
    frozen = [u for u in units if u.mode in ("linear", "estimate")]  # one extraction per job (Plan.units)
    print(f"\nto {'retry' if retry_failed else 'run'}: {sum(len(u.specs) for u in units)} run(s) in "
          f"{len(units)} job(s) ({len(ready)} ready now); the {sum(len(u.specs) for u in frozen)} linear run(s) "
          f"and estimate(s) need at most {len(frozen)} feature extraction(s) (fewer where the cache has them)")
    _print_problems(plan)


def _print_submission(submission: Submission, spec: str, results: Path) -> None:
    if submission.arrays:
        print(f"submitted {len(submission.jobs)} job(s) as array(s) {', '.join(submission.arrays)}; "
              f"follow them with `transferbench status {spec} --results {results}`")
    for unit, error in submission.failed:
        print(f"failed: {unit}: {error}")


def _print_more(count: int, shown: int) -> None:
    if count > shown:
        print(f"  ... and {count - shown} more (--failures N shows more, --json all)")


def _print_jobs(units: list[WorkUnit], executor: str, parallel: int, profile: Profile, results: Path,
                sweep: str) -> None:
    """The jobs of a dry run as the executor will run them: arrays and sbatch scripts only for SLURM (local
    jobs know no arrays, and their parallelism is --parallel, not the profile's)."""
    from .submit import by_mode, plan_arrays, sbatch_preview

    if executor != "slurm":
        for mode, of_mode in by_mode(units).items():
            how = (f"as subprocesses here, at most {max(1, parallel)} at once (--parallel)"
                   if executor == "local" else "one after the other in this process")
            print(f"\n{mode}: {len(of_mode)} job(s) {how}")
        return
    arrays = plan_arrays(units, profile)
    for mode in dict.fromkeys(a.mode for a in arrays):
        of_mode = [a for a in arrays if a.mode == mode]
        print(f"\n{mode}: {sum(len(a.units) for a in of_mode)} job(s) as {len(of_mode)} array(s) of "
              f"{', '.join(str(len(a.units)) for a in of_mode)}, at most "
              f"{' + '.join(str(a.parallelism) for a in of_mode)} running at once")
        print(sbatch_preview(profile, mode, len(of_mode[0].units), results, sweep, of_mode[0].parallelism,
                             of_mode[0].after))
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


SHOW_WORDS = ("show", "list")  # `sweep show NAME` and `sweep list` rather than a sweep of that name


def load_narrowed(args: argparse.Namespace) -> SweepSpec:
    """The sweep SPEC of a parsed `sweep`/`status`, narrowed by --only and --limit (``sweep_filter``)."""
    from .sweep_filter import narrow_sweep, parse_only

    only = parse_only(args.only)  # before loading: a bad --only is the first thing said
    return narrow_sweep(load_sweep(args.spec), only, args.limit)


def spec_words(args: argparse.Namespace) -> str:
    """SPEC with its --only and --limit, as a later `status` or `sweep` must repeat them (they change the grid)."""
    import shlex

    words = [args.spec, *(w for only in args.only or [] for w in ("--only", only))]
    return shlex.join(words + (["--limit", str(args.limit)] if args.limit is not None else []))


def cmd_sweep_show(args: argparse.Namespace) -> int:
    """`sweep show NAME|FILE`: the sweep's YAML as written and its grid's size (after --only/--limit);
    `sweep show` or `sweep list`: the packaged sweeps, one line each."""
    from .sweep_filter import grid_lines, sweep_text

    if args.name is None:
        for name in packaged_sweeps():
            sweep = load_sweep(name)
            total = sum(sweep.grid_size(mode) for mode in sweep.modes)
            print(f"{name:<24} {total:>6} run(s)  {sweep.description}".rstrip())
        print("\nshow one with `transferbench sweep show NAME`; run one with `transferbench sweep NAME`")
        return 0
    args.spec = args.name
    text, origin = sweep_text(args.name)
    sweep = load_narrowed(args)
    print(f"# {origin}")
    print(text.rstrip("\n"))
    narrowed = " (with --only/--limit)" if args.only or args.limit is not None else ""
    print(f"\n# grid{narrowed}:")
    for line in grid_lines(sweep):
        print(f"#   {line}")
    return 0


def _add_quick_flags(parser: argparse.ArgumentParser) -> None:
    """--only and --limit: part of a sweep's grid, on a subset of each split (``sweep_filter``)."""
    parser.add_argument("--only", action="append", metavar="KEY=VALUE,...",
                        help="only part of the grid: task=, method=, mode=, seed=, sparsity= (e.g. "
                             "task=cifar10,method=acdc; a key repeated or the flag given twice adds values)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="quick try: the first N images of each split in every run, taken class by class in "
                             "turn (as `run --limit`; part of each run key, so never mistaken for a full run)")


def add_dispatch_commands(sub: argparse._SubParsersAction) -> None:
    _add_sweep_command(sub)
    _add_status_command(sub)


def _add_sweep_command(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="plan a sweep, skip finished runs, submit the rest (debug, local or SLURM)",
                           description=f"SPEC is a sweep .yaml file or one of: {', '.join(packaged_sweeps())}")
    sweep.add_argument("spec", metavar="SPEC", help="sweep .yaml or a packaged sweep name; `sweep show NAME` prints "
                                                    "one with its grid's size, `sweep list` lists the packaged ones")
    sweep.add_argument("name", nargs="?", help=argparse.SUPPRESS)  # of `sweep show NAME`
    sweep.add_argument("--executor", choices=EXECUTORS, default="slurm",
                       help="slurm (job arrays through submitit), local (subprocesses here) or debug (in this "
                            "process); default slurm")
    sweep.add_argument("--profile", help="cluster profile: slurm/<name>.yaml or a .yaml path (default: the sweep "
                                         "file's profile:, else cpu when every task is a mini-task, else default)")
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
    add_log_flag(sweep, "every job (runs and upstream trainings)")
    _common(sweep)
    sweep.set_defaults(func=cmd_sweep)


def _add_status_command(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="done / running / queued / failed / missing runs of a sweep")
    status.add_argument("spec", help="sweep .yaml or a packaged sweep name")
    status.add_argument("--failures", type=int, default=20,
                        help="list at most this many failed and lost runs each (default 20)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _common(status)
    status.set_defaults(func=cmd_status)


def _common(parser: argparse.ArgumentParser) -> None:
    add_results_flag(parser)
    _add_quick_flags(parser)
    parser.add_argument("--data-root", type=Path, help="folder holding the datasets (default: the sweep's data_root)")
    parser.add_argument("--max-runs", type=int, metavar="N", help="plan a grid of up to N runs (default 20000: a "
                        "bigger one is refused before it is expanded; dispatch.plan.MAX_RUNS)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="registered checkpoints (default: the sweep's, $TRANSFERBENCH_CHECKPOINTS or "
                             "~/.cache/transferbench/checkpoints)")
