"""`transferbench demo`: the whole system, offline, on 2 CPU cores in minutes.

The demo is a sweep: the shipped sweep ``demo`` (``demo_quick`` with ``--quick``; both in
``transferbench/shipped/sweeps/``), run as any sweep is:

1. upstream (the sweep's upstream stage): a dense resnet_tiny and six pruning methods (GMP, WoodFisher, RigL,
   LTH-T, AC/DC, CrAM) at two sparsities, trained on the procedural "shapes" set with the small_cpu recipe
   (CrAM: one model, one-shot pruned + BN-recalibrated per sparsity);
2. transfer (the planner, then the debug executor in this process): linear probes (the paper's 150-epoch SGD
   heads) and full fine-tuning (shortened to a few epochs) on the mini-tasks `digits` (real handwritten digits)
   and `textures`, with two seeds;
   and the transferability estimators of every checkpoint and task (records of mode estimate, from the same
   cached features);
3. report: the tidy table, leaderboards and figures under ``<results>/``, and the estimators' rank correlation
   with the measured accuracies (``<results>/rank``).

``--study bias`` runs the sweep ``demo_bias`` (``demo_bias_quick``) instead: sparse mini-suite models fine-tuned on
the procedural multi-label `faces` set (four attributes correlated with Male by construction), linear and
full, three seeds; its report is the bias study's (``<results>/bias``, `transferbench report bias`).

Everything goes under ``--results`` (default results/demo), checkpoints included, so a demo never touches the
user's own checkpoint registry. ``transferbench sweep demo --executor debug`` runs the same grid into another
results root, using the user's registry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoints.registry import ENV_CHECKPOINTS
from .context import RunContext, configure_determinism
from .errors import TransferbenchError
from .store import FAILED, TO_RUN

DEMO_SWEEP = "demo"
QUICK_SWEEP = "demo_quick"  # fewer methods, one task, short training: the same code paths, for tests
# each study's sweep, and its quick variant
STUDIES = {"transfer": (DEMO_SWEEP, QUICK_SWEEP), "bias": ("demo_bias", "demo_bias_quick")}


def run_demo(results: str | os.PathLike = Path("results/demo"), quick: bool = False,
             study: str = "transfer") -> dict[str, list[Path]]:
    """Run a study's demo sweep (``transfer``: ``demo``, ``demo_quick`` when ``quick``; ``bias``: ``demo_bias``,
    the CelebA bias study on the procedural faces set, then ``report bias``) into ``results``, its upstream models
    under ``<results>/checkpoints``; returns the leaderboard and figure files written. A second call finds every
    model and record and only redraws the report; runs that failed before are tried again."""
    if study not in STUDIES:
        raise TransferbenchError(f"unknown demo study {study!r} (--study); choose one of: {', '.join(STUDIES)}")
    results, start = Path(results), time.perf_counter()
    with _checkpoints_under(results / "checkpoints"):
        _run(results, STUDIES[study][quick], start)
        return _bias_report(results, start) if study == "bias" else _report(results, start)


@contextmanager
def _checkpoints_under(folder: Path) -> Iterator[None]:
    """The checkpoint registry at ``folder`` for the duration (the user's own is restored after)."""
    previous = os.environ.get(ENV_CHECKPOINTS)
    os.environ[ENV_CHECKPOINTS] = str(folder.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_CHECKPOINTS, None)
        else:
            os.environ[ENV_CHECKPOINTS] = previous


def _run(results: Path, sweep_name: str, start: float) -> None:
    from .dispatch import load_profile, load_sweep, plan_sweep, submit_units
    from .dispatch.profiles import default_profile_name
    from .dispatch.stages import prepare_upstream
    from .upstream.chance import chance_summary

    configure_determinism()
    sweep = load_sweep(sweep_name)
    prepare_upstream(sweep, echo=lambda line: print(f"[demo] {line}", flush=True))
    print(f"[demo] upstream models ready ({time.perf_counter() - start:.0f} s)", flush=True)
    for line in chance_summary():  # e.g. LTH-T's 90% ticket, at chance before fine-tuning by design
        print(f"[demo] {line}", flush=True)
    plan = plan_sweep(sweep, results)
    # a rerun retries what failed before, as a fresh demo would (a plain `sweep` needs --retry-failed for that)
    units = plan.units(TO_RUN | {FAILED})
    submission = submit_units(units, RunContext(results=results, num_workers=0), "debug",
                              load_profile(default_profile_name(sweep.tasks, sweep.upstream)), sweep.name)
    for unit, error in submission.failed:
        print(f"[demo] failed: {unit}: {error}", flush=True)
    if submission.failed:
        raise TransferbenchError(f"{len(submission.failed)} of {len(units)} transfer job(s) of the demo failed (first: "
                                 f"{submission.failed[0][0]}: {submission.failed[0][1]}); the errors are in "
                                 f"{results / 'failures'}; run the demo again to retry them")
    estimates = sum(spec.mode == "estimate" for spec in plan.specs)
    print(f"[demo] {len(plan.specs) - estimates} transfer runs and {estimates} estimates done "
          f"({time.perf_counter() - start:.0f} s)", flush=True)


def _rank(runs, out: Path) -> list[Path]:
    """The estimators against the measured runs (`transferbench rank`), printed as the demo's last table."""
    from .report.rank import rank_estimators, write_ranking

    ranking = rank_estimators(runs)
    shown = ranking.table[["task", "mode", "estimator", "n", "kendall_tau", "spearman_rho", "regret"]]
    print("[demo] transferability estimators vs measured accuracy (Kendall tau, Spearman rho over checkpoints; "
          "regret of the top pick in points):")
    print(shown.to_string(index=False, float_format="{:+.2f}".format), flush=True)
    return write_ranking(ranking, out)


def _bias_report(results: Path, start: float) -> dict[str, list[Path]]:
    """The tidy table (the leaderboards are the transfer tasks'), then the bias study's report (`transferbench
    report bias`) of the faces runs, whose summary table is printed."""
    from .report.bias_report import bias_report
    from .report.collect import collect

    collected = collect(results).write(results)
    report = bias_report(results)
    print(f"[demo] bias study ({report.summary}):")
    print((report.out_dir / "bias.md").read_text().split("\n\n")[1], flush=True)
    print(f"[demo] done in {time.perf_counter() - start:.0f} s: tables and figures in {report.out_dir}", flush=True)
    return {"tables": collected, "bias_tables": report.tables, "bias_figures": report.figures}


def _report(results: Path, start: float) -> dict[str, list[Path]]:
    from .report.build import read_runs, write_collection
    from .report.figures import write_figures

    report_runs = read_runs(results)
    collected = write_collection(results, report_runs)
    outputs = {"leaderboards": [p for p in collected if p.parent == results / "leaderboards"],
               "figures": write_figures(report_runs.runs, results / "figures"),
               "rank": _rank(report_runs.collection.runs, results / "rank")}
    print(f"[demo] done in {time.perf_counter() - start:.0f} s: {len(report_runs.collection.runs)} runs, "
          f"{len(outputs['leaderboards'])} leaderboard files, {len(outputs['figures'])} figure files in {results}",
          flush=True)
    return outputs
