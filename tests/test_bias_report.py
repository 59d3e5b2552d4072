"""The CelebA bias study's report (``transferbench report bias``, transferbench.report.bias) on a fake store: a dense
model and a sparse one whose logits are shifted towards each attribute's stereotyped group (2 sparsities x 2 seeds),
checked against independent computations from the saved arrays (numpy, sklearn, scipy)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from test_report_beyond import _write_run

from transferbench.cli import main
from transferbench.report.bias import PREDICTORS, criteria, spearman

# P(attribute | Male), P(attribute | not Male); Young is independent of Male
RATES = {"Young": (0.5, 0.5), "Smiling": (0.45, 0.6), "Blond_Hair": (0.1, 0.4), "Wavy_Hair": (0.2, 0.5),
         "Eyeglasses": (0.3, 0.1), "Bald": (0.2, 0.05), "Bangs": (0.1, 0.3)}
NAMES = ("Male", *RATES)
IDENTITIES = ("Male", "Young")
SPLITS = {"test": 600, "validation": 400, "train": 3000}
SPARSITIES = (0.8, 0.95)
SEEDS = (0, 1)
BIAS_SHIFT = 2.5  # logit shift towards the stereotyped group, times the sparsity


def _attributes(rng: np.random.Generator, n: int) -> np.ndarray:
    male = rng.random(n) < 0.5
    columns = [male] + [rng.random(n) < np.where(male, *RATES[name]) for name in NAMES[1:]]
    return np.stack(columns, axis=1).astype(np.int64)


def _logits(rng: np.random.Generator, y: np.ndarray, sparsity: float) -> np.ndarray:
    """A noisy model of the labels; a sparse one is noisier and pushed towards each attribute's stereotype: more
    positives in the group the attribute co-occurs with, fewer in the other."""
    z = 2.0 * (2 * y - 1) + rng.normal(scale=1.5 + sparsity, size=y.shape)
    male = y[:, 0].astype(bool)
    for j, name in enumerate(NAMES[1:], start=1):
        p_male, p_female = RATES[name]
        if p_male != p_female:
            towards = male if p_male > p_female else ~male
            z[:, j] += BIAS_SHIFT * sparsity * np.where(towards, 1.0, -1.0)
    return z.astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bias")
    rng = np.random.default_rng(18)
    data = {split: _attributes(rng, n) for split, n in SPLITS.items()}
    saved = {}
    for method, sparsities in (("dense", (0.0,)), ("gmp", SPARSITIES)):
        for sparsity in sparsities:
            for seed in SEEDS:
                key = f"{method}{sparsity}-{seed}"
                _write_run(root, key, "celeba", method, sparsity, seed)
                arrays = dict(logits=_logits(rng, data["test"], sparsity), labels=data["test"],
                              classes=np.array(NAMES), attributes=data["test"].astype(np.int8),
                              attribute_names=np.array(NAMES), validation_labels=data["validation"],
                              validation_logits=_logits(rng, data["validation"], sparsity),
                              train_cooccurrence=data["train"].T @ data["train"],
                              train_count=np.int64(len(data["train"])),
                              ids=np.array([f"{i:06d}.jpg" for i in range(SPLITS["test"])]))
                np.savez(root / "runs" / key / "predictions.npz", **arrays)
                saved[key] = arrays
    _write_run(root, "broken", "celeba", "gmp", 0.9, 0, logits=np.zeros((4, 2)), labels=np.zeros(4))
    _write_run(root, "other-task", "dtd", "dense", 0.0, 0)  # not a bias task: left alone
    return {"root": root, "saved": saved, "train": data["train"]}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("bias-out") / "bias"
    out.mkdir()  # a former write's figure of a group that is gone, and a file of the user's
    for name in ("ba_celeba-gone_resnet50_full.png", "criteria_celeba-gone_resnet50_full.pdf", "my_notes.png"):
        (out / name).write_bytes(b"old")
    code = main(["report", "bias", "--results", str(store["root"]), "--out", str(out), "--identity", "Male",
                 "--identity", "Young"])
    assert code == 0
    return {"out": out, **{name: pd.read_csv(out / f"{name}.csv") for name in
                           ("attributes", "runs", "summary", "criteria", "flags", "pies", "skipped")}}


def _zero(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["thresholds"] == "zero"]


def test_files_and_figures_are_written(report):
    out = report["out"]
    for name in ("attributes", "runs", "summary", "criteria", "flags", "pies", "pie_attributes", "skipped"):
        assert (out / f"{name}.csv").is_file()
    for figure in ("ba", "uncertainty", "countermeasure", "criteria"):
        for fmt in ("png", "pdf"):
            assert (out / f"{figure}_celeba_resnet50_linear.{fmt}").stat().st_size > 5000
    assert not list(out.glob("*_celeba-gone_*")) and (out / "my_notes.png").read_bytes() == b"old"
    md = (out / "bias.md").read_text()
    assert "## Bias per cell" in md and "| celeba | resnet50 | linear | gmp | 95% | 2 |" in md
    assert list(report["skipped"]["run_key"]) == ["broken"]
    assert report["skipped"]["reason"][0].startswith("unusable predictions") and "attributes" in \
        report["skipped"]["reason"][0]
    assert set(report["runs"]["task"]) == {"celeba"}


def test_pruning_towards_the_stereotype_increases_bias_amplification(report):
    summary = _zero(report["summary"]).set_index(["method", "sparsity"])
    dense = summary.loc[("dense", 0.0), "ba_Male_mean"]
    assert summary.loc[("gmp", 0.8), "ba_Male_mean"] > dense + 0.02
    assert summary.loc[("gmp", 0.95), "ba_Male_mean"] > summary.loc[("gmp", 0.8), "ba_Male_mean"]
    per_attribute = _zero(report["attributes"]).groupby(["method", "sparsity", "attribute"])["ba_Male"].mean()
    for name in ("Blond_Hair", "Eyeglasses", "Bald"):
        assert per_attribute[("gmp", 0.95, name)] > per_attribute[("dense", 0.0, name)]
    assert math.isnan(per_attribute[("dense", 0.0, "Male")])  # the identity's own column has no BA


def test_attribute_metrics_match_the_saved_arrays(store, report):
    arrays, train = store["saved"]["gmp0.95-1"], store["train"]
    table = _zero(report["attributes"])
    table = table[table["run_key"] == "gmp0.95-1"].set_index("attribute")
    z, y, male = arrays["logits"], arrays["labels"], arrays["attributes"][:, 0].astype(bool)
    assert table.loc[list(NAMES), "accuracy"].to_numpy() == pytest.approx(((z > 0) == y).mean(axis=0))
    # Blond_Hair co-occurs with women in training: BA = P(woman | predicted blond) - P(woman | blond)
    j = NAMES.index("Blond_Hair")
    assert train[train[:, 0] == 0, j].mean() > train[train[:, 0] == 1, j].mean()
    expected = (~male)[z[:, j] > 0].mean() - (~male)[y[:, j] == 1].mean()
    assert table.at["Blond_Hair", "ba_Male"] == pytest.approx(expected)
    # the summary: mean and (sample) std over seeds of each run's mean over attributes
    runs = _zero(report["runs"])
    means = [((store["saved"][f"gmp0.95-{s}"]["logits"] > 0) == y).mean() for s in SEEDS]
    row = _zero(report["summary"]).set_index(["method", "sparsity"]).loc[("gmp", 0.95)]
    assert row["accuracy_mean"] == pytest.approx(np.mean(means)) and row["n"] == 2
    assert row["accuracy_std"] == pytest.approx(np.std(means, ddof=1))
    assert runs.set_index("run_key").at["gmp0.95-1", "accuracy"] == pytest.approx(means[1])


def test_fitted_thresholds_predict_k_minus_one_validation_positives(store, report):
    fitted = report["attributes"][report["attributes"]["thresholds"] == "fitted"]
    for key, arrays in store["saved"].items():
        thresholds = fitted[fitted["run_key"] == key].set_index("attribute").loc[list(NAMES), "threshold"]
        predicted = (arrays["validation_logits"] > thresholds.to_numpy()).sum(axis=0)
        assert (predicted == arrays["validation_labels"].sum(axis=0) - 1).all()
    assert (_zero(report["attributes"])["threshold"] == 0).all()
    summary = report["summary"].set_index(["method", "sparsity", "thresholds"])
    assert summary.loc[("gmp", 0.95, "fitted"), "ba_Male_mean"] != summary.loc[("gmp", 0.95, "zero"), "ba_Male_mean"]


def test_flags_and_pies_match_independent_computation(store, report):
    saved = store["saved"]
    auroc, covered, flagged = [], [], []
    for seed in SEEDS:
        dense, sparse = saved[f"dense0.0-{seed}"]["logits"], saved[f"gmp0.95-{seed}"]["logits"]
        p = 1 / (1 + np.exp(-dense.astype(np.float64)))
        flip = (dense > 0) != (sparse > 0)
        flag = np.abs(p - 0.5) < 0.4
        flagged.append(flag.mean())
        auroc.append(roc_auc_score(flip.ravel(), (1 - 2 * np.abs(p - 0.5)).ravel()))
        covered.append((flag & flip).sum() / flip.sum())
    row = _zero(report["flags"]).set_index(["method", "sparsity"]).loc[("gmp", 0.95)]
    assert row["seeds"] == 2 and row["flag_rate"] == pytest.approx(np.mean(flagged))
    assert row["flip_auroc"] == pytest.approx(np.mean(auroc))
    assert row["flips_covered"] == pytest.approx(np.mean(covered))
    # with 2 seeds a sample's modal prediction is 1 only when both seeds predict 1
    sparse_modal = np.logical_and(*[saved[f"gmp0.95-{s}"]["logits"] > 0 for s in SEEDS])
    dense_modal = np.logical_and(*[saved[f"dense0.0-{s}"]["logits"] > 0 for s in SEEDS])
    pies = _zero(report["pies"]).set_index(["method", "sparsity"]).loc[("gmp", 0.95)]
    assert pies["pies"] == (sparse_modal != dense_modal).sum() > 0
    assert pies["samples_with_pie"] == (sparse_modal != dense_modal).any(axis=1).sum()


def _constructed_attributes() -> pd.DataFrame:
    """Two dense and two sparse seeds over 6 attributes: the dense R² ranks the BA increase exactly, the dense
    uncertainty is random; attribute a5's BA is undefined for dense (left out), a0's in one sparse seed (the
    other seed counts)."""
    rng = np.random.default_rng(5)
    names = [f"a{i}" for i in range(6)]
    rows = []
    increase = np.array([0.05, -0.02, 0.10, 0.01, 0.03, 0.07])
    for method, sparsity in (("dense", 0.0), ("gmp", 0.9)):
        for seed in SEEDS:
            ba = rng.normal(scale=0.01, size=6) + (increase if method == "gmp" else 0.0)
            if method == "dense":
                ba[5] = math.nan
            elif seed == 0:
                ba[0] = math.nan
            for name, value, u in zip(names, ba, rng.random(6), strict=True):
                rows.append({"task": "celeba", "arch": "resnet50", "mode": "linear", "solver": "sgd",
                             "method": method, "sparsity": sparsity, "seed": seed, "run_key": f"{method}{seed}",
                             "thresholds": "zero", "attribute": name, "accuracy": 0.9, "uncertainty": u,
                             "interdependence": 3 * increase[names.index(name)] + 1, "ece": u / 2, "auc": 1 - u,
                             "rare_value_underprediction": 1.0 + u, "train_positive_rate": 0.3, "ba_Male": value})
    return pd.DataFrame(rows)


def test_criteria_are_spearman_correlations_across_attributes_with_the_ba_increase():
    frame = _constructed_attributes()
    table = criteria(frame, {"celeba": ("Male",)}).set_index("predictor")
    assert set(table.index) == set(PREDICTORS)
    assert table.at["interdependence", "rho"] == pytest.approx(1.0) and table.at["interdependence", "n"] == 5
    per_attribute = frame.groupby(["method", "attribute"])[["uncertainty", "ba_Male"]].mean()
    delta = (per_attribute.loc["gmp", "ba_Male"] - per_attribute.loc["dense", "ba_Male"]).drop("a5")
    expected = spearmanr(per_attribute.loc["dense", "uncertainty"].drop("a5"), delta)
    assert table.at["uncertainty", "rho"] == pytest.approx(expected.statistic)
    assert table.at["uncertainty", "p_value"] == pytest.approx(expected.pvalue)
    assert table.at["uncertainty", "mean_delta_ba"] == pytest.approx(delta.mean())
    assert math.isnan(table.at["train_positive_rate", "rho"])  # a constant predictor ranks nothing


def test_spearman_leaves_out_undefined_pairs_and_needs_three():
    x = pd.Series([1.0, 2.0, 3.0, math.nan, 5.0], index=list("abcde"))
    y = pd.Series([2.0, 1.0, 4.0, 3.0, math.inf], index=list("abcde"))
    rho, _, n = spearman(x, y)
    assert n == 3 and rho == pytest.approx(spearmanr([1, 2, 3], [2, 1, 4]).statistic)
    assert math.isnan(spearman(x[:2], y[:2])[0])


def test_no_bias_runs_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "results"
    _write_run(root, "other-task", "dtd", "dense", 0.0, 0)
    out = tmp_path / "out"
    code = main(["report", "bias", "--results", str(root), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no runs of the bias study's tasks")
    assert "--results" in err[0] and not out.exists() and not (root / "bias").exists()
    _write_run(root, "broken", "celeba", "dense", 0.0, 0, logits=np.zeros((4, 2)), labels=np.zeros(4))
    code = main(["report", "bias", "--results", str(root), "--out", str(out), "--identity", "Male"])
    err = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]
    assert code == 2 and len(err) == 1 and "can be used; the first: unusable predictions" in err[0]
    assert "broken" in err[0] and not out.exists()


def test_the_report_page_links_the_bias_study_once_it_is_written(store, tmp_path, capsys):
    from transferbench.report.build import write_report

    root = tmp_path / "results"
    shutil.copytree(store["root"], root)
    write_report(root)
    assert "Bias study" not in (root / "report" / "index.md").read_text()
    assert main(["report", "bias", "--results", str(root), "--identity", "Male"]) == 0
    assert str(root / "bias" / "bias.md") in capsys.readouterr().out  # the default --out: <results>/bias
    markdown, page = (path.read_text() for path in write_report(root))
    assert "## Bias study (CelebA)" in markdown and "transferbench report bias --results" in markdown
    assert "(../bias/bias.md)" in markdown and "(../bias/ba_celeba_resnet50_linear.png)" in markdown
    assert "BA Male (pp), t=0 → fitted" in page  # the HTML page shows its tables inline
