"""Planning a large sweep and skipping the finished runs, against one `transferbench run`-style check per run.

    python benchmarks/bench_sweep.py                 # a 102,000-run grid, half of it done
    python benchmarks/bench_sweep.py --checkpoints 100

The grid is 12 tasks x N checkpoints (local files) x (10 linear seeds + 7 full seeds); half of the runs get a
record on disk before timing. "ours" is `plan_sweep` (run keys, states from directory listings) plus packing the
missing runs into jobs. The baseline builds the same specs one by one and reads each run's record the way a
single `transferbench run` does before it starts (`existing_record`), with no packing.

It also prints what the paper's ResNet50 linear sweep costs as jobs and feature extractions, packed as
`transferbench sweep` does versus one job per run, with its solver (sgd) and with `solvers: [sgd, lbfgs]`.
Extractions are counted from the plan: one per linear job, as the planner packs the runs of one extraction
key (`RunSpec.extraction_key`: task, checkpoint, image size, interpolation, precision, loader, engine) into
one job. One job per run extracts once per run: jobs running at the same time all miss the shared feature
cache. The benchmark checks that a second solver doubles the runs and leaves the extractions as they are.

Run keys hold each checkpoint file's sha256; the grid's checkpoints here are 8-byte files, so hashing is not
in the timings (a ResNet50 checkpoint is about 100 MB; its digest is kept across calls, see digests.sha256_file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from transferbench.checkpoints import resolve_checkpoint
from transferbench.dispatch import load_sweep, plan_sweep
from transferbench.runspec import make_spec
from transferbench.store import existing_record

LINEAR_SEEDS, FULL_SEEDS = list(range(10)), list(range(100, 107))


def write_grid(root: Path, checkpoints: int) -> Path:
    entries = []
    for i in range(checkpoints):
        path = root / "ckpt" / f"m{i}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "little"))  # only hashed by the planner, never loaded
        entries.append({"method": f"method{i % 10}", "sparsity": round(0.5 + (i // 10) * 0.009, 4),
                        "path": str(path), "arch": "resnet50"})
    spec = {"name": "bench", "checkpoints": entries, "tasks": "paper", "modes": ["linear", "full"],
            "seeds": {"linear": LINEAR_SEEDS, "full": FULL_SEEDS}}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def mark_half_done(out: Path, keys: list[str]) -> int:
    done = keys[::2]
    for key in done:
        folder = out / "runs" / key
        folder.mkdir(parents=True)
        (folder / "result.json").write_text('{"status": "completed"}')
    return len(done)


def baseline(sweep_file: Path, out: Path) -> tuple[float, int]:
    """One spec and one record read per run, as a loop of `transferbench run` skip checks would do."""
    t0 = time.perf_counter()
    sweep = load_sweep(sweep_file)
    todo = 0
    for entry in sweep.checkpoints:
        ref = resolve_checkpoint(entry.method, entry.sparsity, entry.arch, entry.path)
        for mode in sweep.modes:
            for task in sweep.tasks:
                for seed in sweep.seeds[mode]:
                    todo += existing_record(out, make_spec(task, mode, seed, ref, {}).run_key) is None
    return time.perf_counter() - t0, todo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tb-bench-sweep-"))
    try:
        sweep_file = write_grid(root, args.checkpoints)
        out = root / "out"
        keys = [s.run_key for s in plan_sweep(load_sweep(sweep_file), out).specs]
        done = mark_half_done(out, keys)

        t0 = time.perf_counter()
        plan = plan_sweep(load_sweep(sweep_file), out)
        units = plan.units(ready_only=False)  # no data root here: count them as if the data were there
        ours = time.perf_counter() - t0
        todo = sum(len(u.specs) for u in units)
        base, base_todo = baseline(sweep_file, out)
        assert todo == base_todo == len(keys) - done, (todo, base_todo)
        linear = [u for u in units if u.mode == "linear"]
        print(f"grid: {len(keys):,} runs, {done:,} done; {todo:,} to run in {len(units):,} jobs; the "
              f"{sum(len(u.specs) for u in linear):,} linear runs need {len(linear):,} feature extractions")
        print(f"plan + skip done + pack: {ours:.2f} s (target < 10 s)")
        print(f"baseline, one spec + record read per run: {base:.2f} s  -> {base / ours:.1f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    os.environ.setdefault("TRANSFERBENCH_CHECKPOINTS", str(root / "none"))
    paper = load_sweep("paper_resnet50_linear")
    print(f"\npaper_resnet50_linear on {len(paper.tasks)} tasks, one job per run vs transferbench sweep:")
    per_solvers = {}
    for solvers in (paper.solvers, ("sgd", "lbfgs")):
        plan = plan_sweep(replace(paper, solvers=solvers), root / "none", check_data=False)
        jobs = plan.units(ready_only=False)  # one linear job per extraction key, so one extraction each
        runs = len(plan.specs)
        extractions = per_solvers[solvers] = len(jobs)
        print(f"  solvers {'+'.join(solvers):9s} {runs:,} runs: {runs:,} jobs and {runs:,} extractions vs "
              f"{len(jobs):,} jobs and {extractions:,} extractions -> {runs / extractions:.0f}x fewer")
    # the solver is not part of the extraction key: a second solver doubles the runs, not the extractions
    assert len(set(per_solvers.values())) == 1, per_solvers


if __name__ == "__main__":
    main()
