"""`transferbench estimate` (records of mode estimate, from the probe's feature cache) and `transferbench rank`
(estimators against measured transfer), checked against scipy, scikit-learn and hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_models import cifar10_world

from transferbench.cli import main
from transferbench.estimators import ESTIMATORS, logme
from transferbench.report.rank import LINEAR_PROBE, correlations, rank_estimators
from transferbench.runspec import CheckpointRef, make_spec
from transferbench.store import Metrics, RunRecord, write_record


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return cifar10_world(tmp_path_factory.mktemp("estimate"))


def _args(command, data, ckpt, out, *extra):
    return [command, "--checkpoint", str(ckpt), "--sparsity", "0.5", "--method", "magnitude", "--task",
            "cifar10", "--data-root", str(data), "--results", str(out), "--image-size", "32", "--workers", "0",
            *extra]


@pytest.mark.slow
def test_estimate_writes_one_record_from_the_probes_feature_cache(setup, capsys):
    from sklearn.neighbors import KNeighborsClassifier

    root, data, ckpt = setup
    out = root / "out"
    assert main(_args("estimate", data, ckpt, out)) == 0
    assert "estimators (train split): logme=" in capsys.readouterr().out
    (path,) = (out / "runs").glob("*/result.json")
    record = json.loads(path.read_text())
    assert record["mode"] == "estimate" and ".estimate." in record["run_key"]
    scores = record["metrics"]["estimators"]
    assert set(scores) == set(ESTIMATORS) and all(math.isfinite(v) for v in scores.values())
    # recomputed from the cached features the record names: LogME directly, the k-NN classifier by sklearn
    cache = {name: torch.load(p, weights_only=True) for name, p in record["config"]["feature_cache"].items()}
    train, test = cache["train"], cache["test"]
    assert scores["logme"] == pytest.approx(logme(train["features"].numpy(), train["labels"].numpy()), rel=1e-9)
    knn = KNeighborsClassifier(20, metric="cosine").fit(train["features"].numpy(), train["labels"].numpy())
    expected = float((knn.predict(test["features"].numpy()) == test["labels"].numpy()).mean())
    assert record["metrics"]["top1"] == pytest.approx(expected)
    assert (record["metrics"]["knn_k"], record["metrics"]["knn_metric"]) == (20, "cosine")
    # the linear probe of the same checkpoint reads the features the estimate extracted
    assert main(_args("run", data, ckpt, out, "--mode", "linear", "--epochs", "2")) == 0
    (linear,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.linear.*/result.json")]
    assert linear["timings"]["features_cached"] is True
    # the collector keeps estimates out of the leaderboards and carries their scores
    assert main(["collect", "--results", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert runs.loc[runs["mode"] == "estimate", "logme"].iloc[0] == pytest.approx(scores["logme"])
    assert math.isnan(runs.loc[runs["mode"] == "linear", "logme"].iloc[0])
    assert not any("estimate" in p.name for p in (out / "leaderboards").iterdir())


def test_estimate_refuses_training_flags_in_one_line(setup, capsys):
    root, data, ckpt = setup
    with pytest.raises(SystemExit) as exc:
        main(_args("estimate", data, ckpt, root / "refused", "--epochs", "3"))
    assert exc.value.code == 2 and "--epochs" in capsys.readouterr().err
    assert not (root / "refused").exists()


def _table(accuracy: dict, scores: dict, mode: str = "linear", task: str = "cifar10") -> pd.DataFrame:
    """Measured runs (two seeds each, around ``accuracy``) and one estimate per checkpoint (``scores``:
    estimator -> {method: score})."""
    rows = []
    for method, acc in accuracy.items():
        base = {"task": task, "arch": "resnet50", "method": method, "target_sparsity": 0.9, "limit": 0}
        rows += [{**base, "mode": mode, "seed": s, "primary": acc + d} for s, d in ((21, 0.01), (51, -0.01))]
        rows.append({**base, "mode": "estimate", "seed": 21, "primary": 0.5,
                     **{name: scores.get(name, {}).get(method, math.nan) for name in ESTIMATORS}})
    frame = pd.DataFrame(rows)
    for name in ESTIMATORS:
        frame[name] = frame.get(name, math.nan)
    return frame


def test_rank_equals_scipys_kendall_and_spearman_and_the_regret_is_hand_computed():
    from scipy.stats import kendalltau, spearmanr

    accuracy = {"a": 0.70, "b": 0.80, "c": 0.75, "d": 0.60, "e": 0.65}
    logme_scores = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.5, "e": 0.2}  # picks c (75%) over the best b (80%)
    ranking = rank_estimators(_table(accuracy, {"logme": logme_scores}), bootstrap=200)
    row = ranking.table.set_index("estimator").loc["logme"]
    x, y = [logme_scores[m] for m in accuracy], list(accuracy.values())
    assert row["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic)
    assert row["spearman_rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert row["n"] == 5 and row["pick"] == "c@90%" and row["best"] == "b@90%"
    assert row["regret"] == pytest.approx(5.0)  # 80% - 75%, in points
    assert row["kendall_low"] <= row["kendall_tau"] <= row["kendall_high"]
    assert list(ranking.table["estimator"]) == ["logme"]  # estimators without scores are left out


def test_rank_bootstrap_is_reproducible_and_a_perfect_estimator_has_no_regret():
    accuracy = {m: 0.5 + 0.05 * i for i, m in enumerate("abcdef")}
    perfect = {m: 10 * a for m, a in accuracy.items()}
    first = rank_estimators(_table(accuracy, {"h_score": perfect}), bootstrap=100, seed=3).table
    again = rank_estimators(_table(accuracy, {"h_score": perfect}), bootstrap=100, seed=3).table
    pd.testing.assert_frame_equal(first, again)
    row = first.iloc[0]
    assert (row["kendall_tau"], row["spearman_rho"], row["regret"]) == pytest.approx((1.0, 1.0, 0.0))
    assert (row["kendall_low"], row["kendall_high"]) == pytest.approx((1.0, 1.0))  # every resample ranks perfectly


def test_correlations_of_a_constant_score_are_not_numbers():
    result = correlations(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]), bootstrap=10)
    assert math.isnan(result["kendall_tau"]) and math.isnan(result["kendall_low"])


def test_the_linear_probe_predicts_full_fine_tuning_only():
    accuracy = {"a": 0.7, "b": 0.8, "c": 0.9}
    linear = _table({"a": 0.9, "b": 0.8, "c": 0.7}, {"logme": {"a": 3, "b": 2, "c": 1}}, mode="linear")
    full = _table(accuracy, {}, mode="full")
    runs = pd.concat([linear, full[full["mode"] == "full"]], ignore_index=True)
    table = rank_estimators(runs, bootstrap=10).table.set_index(["mode", "estimator"])
    assert table.loc[("full", LINEAR_PROBE), "kendall_tau"] == pytest.approx(-1.0)  # the probe's order flips
    assert ("linear", LINEAR_PROBE) not in table.index
    assert table.loc[("linear", "logme"), "kendall_tau"] == pytest.approx(1.0)


def test_rank_command_reads_records_and_writes_its_table_and_figure(tmp_path, capsys):
    accuracy = {"dense": 0.9, "magnitude": 0.8, "acdc": 0.85}
    logme_scores = {"dense": 0.3, "magnitude": 0.1, "acdc": 0.2}
    for method, acc in accuracy.items():
        ref = CheckpointRef(method, 0.0 if method == "dense" else 0.9, "resnet50", f"{method}-id")
        for mode, seed in (("linear", 21), ("linear", 51), ("estimate", 21)):
            spec = make_spec("cifar10", mode, seed, ref)
            extra = {"estimators": {"logme": logme_scores[method]}} if mode == "estimate" else {}
            primary = 0.5 if mode == "estimate" else acc
            record = RunRecord(run_key=spec.run_key, task="cifar10", method=method, arch="resnet50", mode=mode,
                               seed=seed, target_sparsity=ref.sparsity,
                               metrics=Metrics(primary, primary, "top1", primary, extra))
            write_record(tmp_path, record, np.zeros((2, 10), np.float32), np.arange(2))
    assert main(["rank", "--results", str(tmp_path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "logme" in out and "dense@0%" in out
    table = pd.read_csv(tmp_path / "rank" / "rank.csv")
    assert table.loc[0, "kendall_tau"] == pytest.approx(1.0) and table.loc[0, "n"] == 3
    assert (tmp_path / "rank" / "rank_resnet50_linear.png").stat().st_size > 0
    assert "Kendall tau" in (tmp_path / "rank" / "rank.md").read_text()


def test_rank_without_estimates_is_one_line_and_exit_2(tmp_path, capsys):
    ref = CheckpointRef("dense", 0.0, "resnet50", "dense-id")
    spec = make_spec("cifar10", "linear", 21, ref)
    record = RunRecord(run_key=spec.run_key, task="cifar10", method="dense", arch="resnet50", mode="linear",
                       seed=21, target_sparsity=0.0, metrics=Metrics(0.9, 0.9, "top1", 0.9))
    write_record(tmp_path, record, np.zeros((2, 10), np.float32), np.arange(2))
    assert main(["rank", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no estimate records" in errors[0]
    assert not (tmp_path / "rank").exists()
    assert main(["rank", "--results", str(tmp_path), "--bootstrap", "-5"]) == 2
    assert "--bootstrap" in capsys.readouterr().err and not (tmp_path / "rank").exists()


def test_rank_against_the_papers_per_seed_results(tmp_path, capsys):
    # the paper's linear results (raw_results format) stand in for measured accuracies: AC/DC 90 > Dense > STR 90
    reference = tmp_path / "linear_transfer_results.txt"
    reference.write_text("dset,model,sparsity,seed,val_acc\n" + "".join(
        f"cifar10,{model},{sparsity},seed_{seed},{acc + 0.001 * i}\n"
        for model, sparsity, acc in (("Dense", 0.0, 0.90), ("AC/DC", 0.9, 0.92), ("STR", 0.9, 0.85))
        for i, seed in enumerate((21, 51))))
    scores = {"dense": 0.2, "acdc": 0.3, "str": 0.1}  # the paper's order
    for method, score in scores.items():
        ref = CheckpointRef(method, 0.0 if method == "dense" else 0.9, "resnet50", f"{method}-id")
        spec = make_spec("cifar10", "estimate", 21, ref)
        record = RunRecord(run_key=spec.run_key, task="cifar10", method=method, arch="resnet50", mode="estimate",
                           seed=21, target_sparsity=ref.sparsity,
                           metrics=Metrics(0.5, 0.5, "top1", 0.5, {"estimators": {"h_score": score}}))
        write_record(tmp_path, record, np.zeros((2, 10), np.float32), np.arange(2))
    assert main(["rank", "--results", str(tmp_path), "--reference", str(reference), "--bootstrap", "20"]) == 0
    table = pd.read_csv(tmp_path / "rank" / "rank.csv")
    (row,) = table.to_dict("records")
    assert (row["mode"], row["estimator"], row["n"], row["kendall_tau"]) == ("linear", "h_score", 3, 1.0)
    assert row["pick"] == "acdc@90%" and row["regret"] == 0
