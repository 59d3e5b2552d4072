"""`transferbench demo`: the shipped sweeps demo and demo_quick, run end to end (the quick one: same code paths,
fewer methods and epochs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transferbench.checkpoints import resolve_checkpoint
from transferbench.checkpoints.registry import ENV_CHECKPOINTS, CheckpointSpec, register_local
from transferbench.cli import build_parser
from transferbench.cli_flags import OUT_DEPRECATION
from transferbench.demo import run_demo
from transferbench.dispatch import load_sweep, plan_sweep
from transferbench.report import collect, leaderboard
from transferbench.runspec import make_spec

# The grids of the demo, written out as the demo built their specs before it was a sweep (its DemoPlan and
# DemoPlan.quick()): a sweep that planned other run keys would redo every run of an earlier demo instead of reusing
# its records. The demo's full fine-tuning became 8 epochs (5 at the full LR) in session 6 to fit 10 minutes: its
# full runs have new keys on purpose, the linear ones kept theirs.
_METHODS = ("gmp", "woodfisher", "rigl", "lth", "acdc", "cram")
# The quick demo dropped GMP and AC/DC at 80% in session 9 and the second seed of full fine-tuning in session 10
# (a shorter test): its remaining runs kept their keys.
EARLIER_DEMOS = {
    "demo": {"methods": _METHODS, "tasks": ("digits", "textures"),
             "full": {"epochs": 8, "lr_decay_after": [4, 6]}, "linear_epochs": None},
    "demo_quick": {"methods": ("gmp", "acdc", "cram"), "tasks": ("digits",), "full": {"epochs": 6},
                   "linear_epochs": 20, "dropped": {("gmp", 0.8), ("acdc", 0.8)}, "full_seeds": (21,)},
}
SPARSITIES, SEEDS = (0.8, 0.9), (21, 51)


def _earlier_demo_keys(methods, tasks, full, linear_epochs, dropped=frozenset(), full_seeds=SEEDS) -> list[str]:
    refs = [resolve_checkpoint("dense", 0.0, "resnet_tiny", None)]
    refs += [resolve_checkpoint(m, s, "resnet_tiny", None) for m in methods for s in SPARSITIES
             if (m, s) not in dropped]
    linear = {"epochs": linear_epochs} if linear_epochs else {}  # None: the paper's 150
    return [make_spec(task, mode, seed, ref, overrides).run_key
            for ref in refs for task in tasks for seed in SEEDS
            for mode, overrides in (("linear", linear), ("full", full)) if mode == "linear" or seed in full_seeds]


@pytest.fixture
def registered_demo_models(tmp_path, monkeypatch):
    """Every upstream model of the demo registered (stand-in files: run keys depend on the file's digest, not on
    its contents being a model), in a registry of the test's own."""
    monkeypatch.setenv(ENV_CHECKPOINTS, str(tmp_path / "checkpoints"))
    for method, sparsity in [("dense", 0.0), *((m, s) for m in _METHODS for s in SPARSITIES)]:
        name = f"demo_{method}{round(sparsity * 100)}"
        file = tmp_path / f"{name}.pth"
        file.write_bytes(name.encode())
        register_local(CheckpointSpec(name, method, sparsity, "resnet_tiny"), file)


@pytest.mark.parametrize("sweep_name", sorted(EARLIER_DEMOS))
def test_the_demo_sweeps_plan_the_runs_of_the_earlier_demo(sweep_name, registered_demo_models, tmp_path):
    plan = plan_sweep(load_sweep(sweep_name), tmp_path / "results")
    assert not plan.unresolved
    planned = [s.run_key for s in plan.specs if s.mode != "estimate"]  # estimates came later, one per cell
    estimates = {(s.task, s.checkpoint) for s in plan.specs if s.mode == "estimate"}
    assert len(estimates) == len(plan.specs) - len(planned) == len({(s.task, s.checkpoint) for s in plan.specs})
    expected = _earlier_demo_keys(**EARLIER_DEMOS[sweep_name])
    assert len(planned) == len(expected) == len(set(expected))
    assert sorted(planned) == sorted(expected)


def test_demo_takes_results_and_still_the_deprecated_out(capsys):
    parser = build_parser()
    assert parser.parse_args(["demo"]).results == Path("results/demo")
    assert parser.parse_args(["demo", "--results", "r1", "--quick"]).results == Path("r1")
    assert "--out" not in capsys.readouterr().err
    assert parser.parse_args(["demo", "--out", "r2"]).results == Path("r2")
    assert OUT_DEPRECATION in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_builds_upstream_transfers_and_reports(tmp_path):
    before = os.environ.get(ENV_CHECKPOINTS)
    sweep = load_sweep("demo_quick")
    outputs = run_demo(tmp_path, quick=True)
    assert os.environ.get(ENV_CHECKPOINTS) == before  # the user's registry is left alone
    assert (tmp_path / "checkpoints" / "local.yaml").exists()

    runs = collect(tmp_path).runs
    assert len(runs) == sweep.grid_size("linear") + sweep.grid_size("full") + sweep.grid_size("estimate") == 20
    chance = 1 / 10  # digits
    assert (runs["top1"] > 3 * chance).all(), runs.loc[runs["top1"] <= 3 * chance, ["method", "mode", "top1"]]

    for mode in ("linear", "full"):
        table = leaderboard(runs, "resnet_tiny", mode).table
        means = table[("digits", "mean")]
        assert means.nunique() > 1  # methods differ measurably: no constant column
        assert set(table.index.get_level_values(0)) == {"dense", "gmp", "acdc", "cram"}
    assert outputs["leaderboards"] and all(p.parent == tmp_path / "leaderboards" for p in outputs["leaderboards"])
    assert {p.suffix for p in outputs["leaderboards"]} == {".md", ".csv", ".tex"}
    assert {p.suffix for p in outputs["figures"]} == {".png", ".pdf"}
    assert all(p.stat().st_size > 5000 for p in outputs["figures"])
    assert any("upstream_vs_transfer" in p.name for p in outputs["figures"])  # upstream top-1 is recorded
    ranking = pd.read_csv(tmp_path / "rank" / "rank.csv")  # 5 checkpoints ranked per mode by every estimator
    assert set(ranking["mode"]) == {"linear", "full"} and (ranking["n"] == 5).all()
    assert set(ranking["estimator"]) == {"logme", "leep", "nce", "h_score", "h_score_shrinkage", "knn_accuracy",
                                         "linear_probe"}
    assert any(p.name == "rank_resnet_tiny_full.png" for p in outputs["rank"])

    start = time.perf_counter()  # a second demo finds every model and record and only redraws the report
    run_demo(tmp_path, quick=True)
    assert time.perf_counter() - start < 30
    assert len(collect(tmp_path).runs) == len(runs)
    assert isinstance(pd.read_parquet(tmp_path / "runs.parquet"), pd.DataFrame)

    # the bias study's demo in the same folder: the same upstream models, fine-tuned on the faces set
    bias = run_demo(tmp_path, quick=True, study="bias")
    assert {p.name for p in bias["bias_tables"]} >= {"bias.md", "summary.csv", "attributes.csv", "criteria.csv",
                                                     "flags.csv", "pies.csv"}
    assert all(p.stat().st_size > 5000 for p in bias["bias_figures"] if p.suffix == ".png")
    _check_bias_direction(tmp_path)


def _check_bias_direction(results: Path) -> None:
    """Big_Nose is drawn for 50% of the male faces and 15% of the female ones: the report's bias amplification for
    it and Male must use a* = male, i.e. equal P(male | predicted) - P(male | true), computed here from the dense
    runs' saved predictions (both groups have enough test positives for the skip rules to keep it)."""
    table = pd.read_csv(results / "bias" / "attributes.csv")
    rows = table[(table["method"] == "dense") & (table["attribute"] == "Big_Nose")]
    assert len(rows) >= 2  # runs x threshold settings
    for row in rows.itertuples():
        with np.load(results / "runs" / row.run_key / "predictions.npz") as npz:
            names = list(npz["attribute_names"])
            column = list(npz["classes"]).index("Big_Nose")
            z, y = npz["logits"][:, column], npz["labels"][:, column]
            male = npz["attributes"][:, names.index("Male")] == 1
        predicted = z > row.threshold
        if not predicted.any():  # a weak quick model may predict no positive at t = 0: BA is undefined
            assert np.isnan(row.ba_Male), row.run_key
            continue
        assert row.ba_Male == pytest.approx(male[predicted].mean() - male[y == 1].mean()), row.run_key
    assert rows["ba_Male"].notna().sum() >= len(rows) // 2
