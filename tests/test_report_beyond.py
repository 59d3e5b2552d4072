"""Beyond-accuracy metrics: formulas against hand computations, and the analysis of a results store written with
predictions in the real layout (runs/<key>/result.json + predictions.npz)."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from transferbench.cli import main
from transferbench.report import collect
from transferbench.report import prediction_metrics as bm
from transferbench.report.predictions import WORST_SEED_CLASS, beyond, beyond_figure, to_markdown, write_beyond

# ------------------------------------------------------------------------------------------ formulas by hand


def test_ece_by_hand():
    # confidences 0.95, 0.95 (bin 15: (14/15, 1]) and 0.6, 0.5 (bin 9: (8/15, 9/15], bin 8: (7/15, 8/15])
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.5, 0.5]])
    labels = np.array([0, 0, 1, 0])
    # bin 15: accuracy 1/2, confidence 0.95 → |0.5 − 0.95|·2/4; bin 9: acc 0, conf 0.6 → 0.6/4;
    # bin 8: argmax of a tie is class 0, correct → |1 − 0.5|/4
    expected = 0.45 * 2 / 4 + 0.6 / 4 + 0.5 / 4
    assert bm.ece(probs, labels) == pytest.approx(expected)
    # a confidence exactly on an edge belongs to the bin it closes: 0.6 = 9/15 → bin 9, as above
    assert bm.ece(np.array([[1.0, 0.0]]), np.array([0])) == 0.0
    assert bm.ece(np.array([[0.6, 0.4]]), np.array([0]), n_bins=1) == pytest.approx(0.4)


def test_ece_two_confidences_in_one_bin_and_an_exact_edge():
    probs = np.array([[0.62, 0.38], [0.35, 0.65], [0.8, 0.2], [0.81, 0.19]])
    labels = np.array([0, 0, 1, 0])  # right, wrong, wrong, right
    # M = 15: 0.62 and 0.65 share bin 10 = (0.6, 0.667]: accuracy 1/2 against their mean confidence 0.635;
    # 0.8 = 12/15 exactly closes bin 12 = (0.733, 0.8] alone; 0.81 is in bin 13 = (0.8, 0.867]
    expected = abs(0.5 - 0.635) * 2 / 4 + abs(0.0 - 0.8) / 4 + abs(1.0 - 0.81) / 4
    assert bm.ece(probs, labels) == pytest.approx(expected)
    # had 0.8 gone to bin 13 with 0.81: |1/2 − 0.805|·2/4 there instead
    assert not math.isclose(bm.ece(probs, labels), abs(0.5 - 0.635) / 2 + abs(0.5 - 0.805) / 2)


def test_churn_flips_and_identity():
    labels = np.array([0, 1, 2, 0, 1])
    dense = np.array([0, 1, 0, 0, 2])  # correct: T T F T F
    sparse = np.array([0, 2, 2, 1, 2])  # correct: T F T F F
    assert bm.churn(sparse, dense) == pytest.approx(3 / 5)  # samples 1, 2, 3 differ
    nfr, pfr = bm.flips(sparse, dense, labels)
    assert nfr == pytest.approx(2 / 5) and pfr == pytest.approx(1 / 5)
    assert np.mean(sparse == labels) - np.mean(dense == labels) == pytest.approx(pfr - nfr)


def test_entropy_by_hand():
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4])
    assert np.allclose(bm.normalized_entropy(probs), [math.log(2) / math.log(4), 0.0, 1.0])
    assert np.allclose(bm.softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])), [[0.5, 0.5], [1.0, 0.0]])


def test_per_class_drop_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    dense = np.array([0, 0, 1, 1, 0, 2])  # class acc 1, 2/3, 1
    sparse = np.array([0, 1, 1, 1, 1, 0])  # class acc 1/2, 1, 0
    delta, a_d, n = bm.per_class_drop(sparse, dense, labels, 4)
    assert np.allclose(delta[:3], [-0.5, 1 / 3, -1.0]) and math.isnan(delta[3])
    assert np.allclose(a_d[:3], [1, 2 / 3, 1]) and list(n) == [2, 3, 1, 0]


def test_modal_prediction_and_pies():
    dense = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [1, 1, 2, 0]])  # modes 0 1 2 3 (sample 3: 3,3,0 → 3)
    sparse = np.array([[0, 2, 2, 1], [0, 2, 1, 0], [1, 1, 1, 0]])  # modes 0 2 1 0 (sample 2: 2,1,1 → 1)
    assert list(bm.modal_prediction(dense, 4)) == [0, 1, 2, 3]
    assert list(bm.modal_prediction(sparse, 4)) == [0, 2, 1, 0]
    assert list(bm.modal_prediction(np.array([[3], [1]]), 4)) == [1]  # a tie goes to the smaller label
    assert list(bm.pruning_identified_exemplars(sparse, dense, 4)) == [False, True, True, True]


def test_pair_metrics_consistent():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    zd = rng.normal(size=(400, 5)) + 3 * np.eye(5)[labels]
    zs = zd + rng.normal(scale=1.5, size=zd.shape)
    m = bm.pair_metrics(zd, zs, labels, min_count=20)
    yd, ys = zd.argmax(1), zs.argmax(1)
    assert m["churn"] == pytest.approx(np.mean(yd != ys))
    assert m["top1_sparse"] - m["top1_dense"] == pytest.approx(m["pfr"] - m["nfr"])
    drops = [np.mean(ys[labels == c] == c) - np.mean(yd[labels == c] == c) for c in range(5)]
    assert m["worst_class_drop"] == pytest.approx(min(drops)) and m["classes_used"] == 5
    assert m["bottom10_class_drop"] == pytest.approx(min(drops))  # ceil(10% of 5) = 1 class
    assert m["entropy_shift"] == pytest.approx(m["entropy_sparse"] - m["entropy_dense"])


# ------------------------------------------------------------------------------------- a store with predictions

N, C = 120, 6
SEEDS = (0, 1, 2)
SPARSE = {"acdc": (0.8, 0.9), "rigl_erk5x": (0.9,)}


def _write_run(root, key, task, method, sparsity, seed, logits=None, labels=None, arch="resnet50", classes=None):
    d = root / "runs" / key
    d.mkdir(parents=True)
    rec = {
        "schema_version": 1,
        "status": "completed",
        "run_key": key,
        "task": task,
        "method": method,
        "arch": arch,
        "mode": "linear",
        "seed": seed,
        "target_sparsity": sparsity,
        "created_at": "2026-01-01T00:00:00+00:00",
        "metrics": {"top1": 0.5, "mean_per_class_acc": 0.5, "primary": 0.5, "primary_metric": "top1"},
        "config": {"hparams": {"solver": "sgd"}},
        "predictions": "predictions.npz",
    }
    (d / "result.json").write_text(json.dumps(rec))
    if logits is not None:
        names = {"classes": np.asarray(classes, dtype=str)} if classes is not None else {}
        np.savez(d / "predictions.npz", logits=logits.astype(np.float32), labels=labels.astype(np.int64), **names)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(C), N // C)
    truth = {}
    for seed in SEEDS:
        dense = rng.normal(size=(N, C)) + 2.5 * np.eye(C)[labels]
        truth[("dense", 0.0, seed)] = dense
        _write_run(root, f"d{seed}", "dtd", "dense", 0.0, seed, dense, labels)
        for method, sparsities in SPARSE.items():
            for s in sparsities:
                logits = dense + rng.normal(scale=2.0 * s, size=dense.shape)
                truth[(method, s, seed)] = logits
                arch = "resnet50_rigl" if method.startswith("rigl") else "resnet50"
                if (method, s, seed) == ("acdc", 0.8, 2):  # its predictions file is missing
                    _write_run(root, f"{method}{s}-{seed}", "dtd", method, s, seed)
                    continue
                _write_run(root, f"{method}{s}-{seed}", "dtd", method, s, seed, logits, labels, arch=arch)
    _write_run(root, "orphan", "pets", "acdc", 0.9, 0, rng.normal(size=(N, C)), labels)  # no dense on pets
    _write_run(root, "pets-dense", "pets", "dense", 0.0, 1, rng.normal(size=(N, C)), labels)
    shuffled = rng.permutation(labels)
    _write_run(root, "other-list", "pets", "acdc", 0.9, 1, rng.normal(size=(N, C)), shuffled)
    return {"root": root, "labels": labels, "truth": truth, "result": beyond(collect(root).runs, min_count=10)}


def test_pairs_and_missing_are_counted(store):
    res = store["result"]
    assert len(res.pairs) == 3 * 3 - 1  # three sparse cells × three seeds, one without predictions
    reasons = dict(zip(res.missing["run_key"], res.missing["reason"], strict=True))
    assert set(reasons) == {"acdc0.8-2", "orphan", "other-list"}
    assert reasons["acdc0.8-2"].startswith("no predictions")
    assert reasons["orphan"].startswith("no dense partner")
    assert reasons["other-list"].startswith("test list differs")
    assert "3 sparse run(s) not paired" in res.summary()
    assert set(res.pairs["arch"]) == {"resnet50"}  # the RigL variant pairs with the ResNet50 dense run


def test_cell_values_match_independent_computation(store):
    res, truth, labels = store["result"], store["truth"], store["labels"]
    cell = res.cells.set_index(["method", "sparsity"]).loc[("acdc", 0.9)]
    dense = [truth[("dense", 0.0, s)] for s in SEEDS]
    sparse = [truth[("acdc", 0.9, s)] for s in SEEDS]
    churns = [np.mean(d.argmax(1) != s.argmax(1)) for d, s in zip(dense, sparse, strict=True)]
    assert cell["seeds"] == 3 and cell["churn"] == pytest.approx(np.mean(churns), rel=1e-6)

    def ece(z):
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        conf, ok = p.max(1), p.argmax(1) == labels
        b = np.minimum(np.ceil(conf * 15).astype(int) - 1, 14)
        return sum(abs(ok[b == k].mean() - conf[b == k].mean()) * (b == k).mean() for k in range(15) if (b == k).any())

    assert cell["delta_ece"] == pytest.approx(
        np.mean([ece(s) - ece(d) for d, s in zip(dense, sparse, strict=True)]), rel=1e-5
    )

    # PIEs: modal sparse label over 3 seeds ≠ modal dense label (ties → smaller label)
    def modes(zs):
        preds = np.stack([z.argmax(1) for z in zs])
        return np.array([np.bincount(preds[:, i], minlength=C).argmax() for i in range(N)])

    pies = modes(sparse) != modes(dense)
    assert cell["pie_count"] == pies.sum()
    ex = res.exemplars[(res.exemplars["method"] == "acdc") & (res.exemplars["sparsity"] == 0.9)]
    assert len(ex) == min(20, pies.sum()) and pies[ex["index"]].all()
    assert ex["sparse_seeds_away"].is_monotonic_decreasing
    # classes hurt most: the lowest mean per-class drops
    drops = np.mean(
        [
            [np.mean(s.argmax(1)[labels == c] == c) - np.mean(d.argmax(1)[labels == c] == c) for c in range(C)]
            for d, s in zip(dense, sparse, strict=True)
        ],
        axis=0,
    )
    worst = int(np.argmin(drops))
    assert cell["most_hurt"].startswith(f"{worst} ({drops[worst] * 100:+.1f})")
    two_seeds = res.cells.set_index(["method", "sparsity"]).loc[("acdc", 0.8)]
    assert two_seeds["seeds"] == 2 and not pd.isna(two_seeds["pie_count"])


def test_outputs_and_figure(store, tmp_path):
    paths = write_beyond(store["result"], tmp_path)
    names = {p.name for p in paths}
    assert {
        "beyond.csv",
        "beyond.md",
        "beyond_pairs.csv",
        "beyond_classes.csv",
        "beyond_exemplars.csv",
        "beyond_missing.csv",
        "beyond_skipped.csv",
        "beyond_resnet50_linear.png",
        "beyond_resnet50_linear.pdf",
    } == names
    for p in paths:
        if p.suffix in (".png", ".pdf"):
            assert p.stat().st_size > 5000
    assert len(pd.read_csv(tmp_path / "beyond_missing.csv")) == 3
    md = (tmp_path / "beyond.md").read_text()
    assert "| resnet50 | linear | dtd | acdc | 90% | 3 |" in md and "## Not paired" in md and "orphan" in md
    fig = beyond_figure(store["result"].cells, "resnet50", "linear")
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert legend == ["RigL ERK 5x", "AC/DC"]  # the fixed method order of every figure, by display name


def test_beyond_command(capsys, store, tmp_path):
    code = main(["report", "beyond", "--results", str(store["root"]), "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert code == 0 and "8 sparse/dense pair(s)" in out and "3 sparse run(s) not paired" in out
    assert (tmp_path / "b" / "beyond.csv").is_file()
    code = main(["report", "beyond", "--results", str(tmp_path / "nothing")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln[:4].isdigit()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--results" in err[0]


def test_cells_whose_seeds_have_different_test_lists_are_skipped(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(C), N // C)
    other = rng.permutation(labels)
    for seed, lab in ((0, labels), (1, other)):  # each pair is consistent, the seeds are not
        dense = rng.normal(size=(N, C)) + 3 * np.eye(C)[lab]
        _write_run(tmp_path, f"d{seed}", "dtd", "dense", 0.0, seed, dense, lab)
        _write_run(tmp_path, f"s{seed}", "dtd", "acdc", 0.9, seed, dense + rng.normal(size=dense.shape), lab)
    short = labels[:60]  # another cell whose second seed saw a shorter test list
    for seed, lab in ((0, labels), (1, short)):
        dense = rng.normal(size=(len(lab), C)) + 3 * np.eye(C)[lab]
        _write_run(tmp_path, f"pd{seed}", "pets", "dense", 0.0, seed, dense, lab)
        _write_run(tmp_path, f"ps{seed}", "pets", "acdc", 0.9, seed, dense, lab)
    res = beyond(collect(tmp_path).runs)
    reasons = dict(zip(res.skipped["task"], res.skipped["reason"], strict=True))
    assert reasons == {"dtd": "test lists differ across seeds: the labels (or their order) differ",
                       "pets": f"test lists differ across seeds: {N} and 60 test samples"}
    assert res.cells.empty and len(res.pairs) == 4 and "2 cell(s) skipped" in res.summary()
    assert "## Skipped cells" in to_markdown(res)


def test_most_hurt_only_lists_classes_that_dropped_and_uses_class_names(tmp_path, monkeypatch):
    beyond_module = importlib.import_module("transferbench.report.predictions")
    labels = np.repeat(np.arange(C), N // C)
    names = tuple(f"class_{k}" for k in range(C))
    monkeypatch.setattr(beyond_module, "class_names", lambda task: names if task == "dtd" else None)
    dense = 3 * np.eye(C)[labels]
    dense[labels == 0] = 3 * np.eye(C)[1]  # dense misses all of class 0
    sparse = dense.copy()
    sparse[labels == 0] = 3 * np.eye(C)[0]  # the sparse model gets class 0 right ...
    sparse[np.flatnonzero(labels == 4)[:5]] = 3 * np.eye(C)[5]  # ... and loses 5 of the 20 of class 4
    for seed in (0, 1):
        _write_run(tmp_path, f"d{seed}", "dtd", "dense", 0.0, seed, dense, labels)
        _write_run(tmp_path, f"s{seed}", "dtd", "acdc", 0.9, seed, sparse, labels)
        _write_run(tmp_path, f"pd{seed}", "pets", "dense", 0.0, seed, dense, labels)
        _write_run(tmp_path, f"ps{seed}", "pets", "acdc", 0.9, seed, dense, labels)  # the same as dense
    res = beyond(collect(tmp_path).runs, min_count=10)
    cells = res.cells.set_index("task")
    assert cells.loc["dtd", "most_hurt"] == "class_4 (-25.0)"  # class 0 gained: not "hurt"
    assert cells.loc["pets", "most_hurt"] == ""  # nothing dropped, nothing listed (no class-index names either)
    assert cells.loc["dtd", "worst_class_drop"] == pytest.approx(-0.25)
    classes = res.classes[res.classes["task"] == "dtd"].set_index("class")
    assert classes.loc[0, "class_name"] == "class_0" and classes.loc[0, "mean_drop"] == pytest.approx(1.0)
    md = to_markdown(res)
    assert f"| {WORST_SEED_CLASS} |" in md and "| class_4 (-25.0) |" in md


def test_class_names_saved_with_the_predictions_win_over_the_card(tmp_path, monkeypatch):
    beyond_module = importlib.import_module("transferbench.report.predictions")
    monkeypatch.setattr(beyond_module, "class_names", lambda task: tuple(f"card_{k}" for k in range(C)))
    labels = np.repeat(np.arange(C), N // C)
    dense = 3 * np.eye(C)[labels]
    sparse = dense.copy()
    sparse[np.flatnonzero(labels == 2)[:5]] = 3 * np.eye(C)[3]
    saved = [f"folder_{k}" for k in range(C)]
    for seed in (0, 1):
        _write_run(tmp_path, f"d{seed}", "dtd", "dense", 0.0, seed, dense, labels, classes=saved)
        _write_run(tmp_path, f"s{seed}", "dtd", "acdc", 0.9, seed, sparse, labels, classes=saved)
        _write_run(tmp_path, f"pd{seed}", "pets", "dense", 0.0, seed, dense, labels)  # older runs: no names saved
        _write_run(tmp_path, f"ps{seed}", "pets", "acdc", 0.9, seed, sparse, labels)
    cells = beyond(collect(tmp_path).runs, min_count=10).cells.set_index("task")
    assert cells.loc["dtd", "most_hurt"] == "folder_2 (-25.0)"
    assert cells.loc["pets", "most_hurt"] == "card_2 (-25.0)"
