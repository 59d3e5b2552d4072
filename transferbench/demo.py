"""`transferbench demo`: the whole system, offline, on 2 CPU cores in minutes.

1. upstream: a dense resnet_tiny and six pruning methods (GMP, WoodFisher, RigL, LTH-T, AC/DC, CrAM) at two
   sparsities, trained on the procedural "shapes" set with the small_cpu recipe (CrAM: one model, one-shot
   pruned + BN-recalibrated per sparsity);
2. transfer: linear probes (the paper's 150-epoch SGD heads) and full fine-tuning (shortened to a few epochs)
   on the mini-tasks `digits` (real handwritten digits) and `textures`, with two seeds;
3. report: the tidy table, leaderboards and figures under `<out>/`.

Everything goes under ``--out`` (default results/demo), checkpoints included, so a demo never touches the
user's own checkpoint registry.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .checkpoints import resolve_checkpoint
from .context import RunContext, configure_determinism
from .progress import interactive
from .runner import run
from .runspec import RunSpec, group_by_extraction, make_spec

log = logging.getLogger("transferbench")


@dataclass(frozen=True)
class DemoPlan:
    methods: tuple[str, ...] = ("gmp", "woodfisher", "rigl", "lth", "acdc", "cram")
    sparsities: tuple[float, ...] = (0.8, 0.9)
    tasks: tuple[str, ...] = ("digits", "textures")
    seeds: tuple[int, ...] = (21, 51)
    full_epochs: int = 15
    linear_epochs: int | None = None  # None: the paper's 150
    recipe: str = "small_cpu"
    extra_overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> DemoPlan:
        """A smaller plan for tests and smoke checks (same code paths)."""
        return cls(methods=("gmp", "acdc", "cram"), sparsities=(0.8, 0.9), tasks=("digits",), seeds=(21, 51),
                   full_epochs=6, linear_epochs=20)


def _build_upstream(plan: DemoPlan) -> None:
    from .checkpoints import find_checkpoint
    from .errors import TransferbenchError
    from .upstream import train_upstream

    wanted: list[tuple[str, list[float]]] = [("dense", [0.0])]
    for method in plan.methods:  # CrAM: one model, one one-shot candidate per sparsity
        wanted += [(method, list(plan.sparsities))] if method == "cram" else [(method, [s]) for s in plan.sparsities]
    for method, sparsities in tqdm(wanted, desc="upstream models", disable=not interactive()):
        try:
            for s in sparsities:
                find_checkpoint(method, s, "resnet_tiny")
            continue  # already built by an earlier (interrupted) demo
        except TransferbenchError:
            pass
        print(f"[demo] upstream {method} at {', '.join(f'{s:g}' for s in sparsities)}", flush=True)
        train_upstream(method, sparsities, arch="resnet_tiny", recipe=plan.recipe)


def _specs(plan: DemoPlan) -> list[RunSpec]:
    refs = [resolve_checkpoint("dense", 0.0, "resnet_tiny", None)]
    refs += [resolve_checkpoint(m, s, "resnet_tiny", None) for m in plan.methods for s in plan.sparsities]
    specs = []
    for ref in refs:
        for task in plan.tasks:
            for seed in plan.seeds:
                linear = dict(plan.extra_overrides)
                if plan.linear_epochs:
                    linear["epochs"] = plan.linear_epochs
                specs.append(make_spec(task, "linear", seed, ref, linear))
                specs.append(make_spec(task, "full", seed, ref, {**plan.extra_overrides, "epochs": plan.full_epochs}))
    return specs


def run_demo(out: Path = Path("results/demo"), plan: DemoPlan | None = None) -> dict[str, list[Path]]:
    plan = plan or DemoPlan()
    out = Path(out)
    previous = os.environ.get("TRANSFERBENCH_CHECKPOINTS")
    os.environ["TRANSFERBENCH_CHECKPOINTS"] = str((out / "checkpoints").resolve())
    try:
        return _run(out, plan)
    finally:
        if previous is None:
            os.environ.pop("TRANSFERBENCH_CHECKPOINTS", None)
        else:
            os.environ["TRANSFERBENCH_CHECKPOINTS"] = previous


def _run(out: Path, plan: DemoPlan) -> dict[str, list[Path]]:
    configure_determinism()
    start = time.perf_counter()
    _build_upstream(plan)
    print(f"[demo] upstream models ready ({time.perf_counter() - start:.0f} s)", flush=True)
    ctx = RunContext(results=out, num_workers=0)
    specs = _specs(plan)
    for group in tqdm(group_by_extraction(specs), desc="transfer runs", disable=not interactive()):
        run(group, ctx)
    print(f"[demo] {len(specs)} transfer runs done ({time.perf_counter() - start:.0f} s)", flush=True)
    from .report import collect, write_figures, write_leaderboards

    collection = collect(out)
    collection.write(out)
    outputs = {"leaderboards": write_leaderboards(collection.runs, out / "leaderboards"),
               "figures": write_figures(collection.runs, out / "figures")}
    print(f"[demo] done in {time.perf_counter() - start:.0f} s: {len(collection.runs)} runs, "
          f"{len(outputs['leaderboards'])} leaderboard files, {len(outputs['figures'])} figure files in {out}",
          flush=True)
    return outputs
