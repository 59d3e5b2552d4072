"""The low-data regime: the seeded class-balanced subset (--train-size, --train-per-class, the vtab1k preset), its
place in the run key, the feature cache and the record, and the tables that carry the size as a dimension."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from fixtures_models import cifar10_world

from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.report.low_data import low_data_frames
from transferbench.report.select import one_train_size
from transferbench.runspec import CheckpointRef, make_spec
from transferbench.tasks.subset import subset_indices

LABELS = [0] * 30 + [1] * 12 + [2] * 5 + [3] * 20  # unequal classes, one short one


def test_train_size_draws_a_class_balanced_subset_within_one_image():
    chosen = subset_indices(LABELS, seed=21, size=22)
    counts = Counter(LABELS[i] for i in chosen)
    assert len(chosen) == 22 == len(set(chosen)) and chosen == sorted(chosen)
    assert sorted(counts.values()) == [5, 5, 6, 6]  # 22 over 4 classes: two of them get one more
    short = subset_indices(LABELS, seed=21, size=40)  # class 2 has 5: the others share the rest
    assert Counter(LABELS[i] for i in short)[2] == 5 and len(short) == 40
    assert max(Counter(LABELS[i] for i in short if LABELS[i] != 2).values()) - \
        min(Counter(LABELS[i] for i in short if LABELS[i] != 2).values()) <= 1


def test_the_subset_is_the_seeds_reproducible_and_nested():
    assert subset_indices(LABELS, 21, size=20) == subset_indices(LABELS, 21, size=20)
    assert subset_indices(LABELS, 21, size=20) != subset_indices(LABELS, 51, size=20)
    assert set(subset_indices(LABELS, 21, size=12)) <= set(subset_indices(LABELS, 21, size=20))
    counts = Counter(LABELS[i] for i in subset_indices(LABELS, 21, per_class=8))
    assert counts == {0: 8, 1: 8, 2: 5, 3: 8}  # every class's first 8; all 5 of the short one
    assert subset_indices(LABELS, 21) == list(range(len(LABELS)))


def test_the_subset_is_uniform_over_each_class_across_seeds():
    # each image of class 0 is drawn with probability 5/30 at size 20 (5 per class): over 3000 seeds, within 4 sd
    hits = np.zeros(len(LABELS))
    for seed in range(3000):
        hits[subset_indices(LABELS, seed, size=20)] += 1
    p = 5 / 30
    assert np.abs(hits[:30] / 3000 - p).max() < 4 * np.sqrt(p * (1 - p) / 3000)


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(TransferbenchError, match="exceeds the training split's 67 images"):
        subset_indices(LABELS, 21, size=100)
    ref = CheckpointRef("dense", 0.0, "resnet_tiny", "x")
    with pytest.raises(TransferbenchError, match="give one"):
        make_spec("digits", "linear", 21, ref, {"train_size": 10, "train_per_class": 2})
    with pytest.raises(TransferbenchError, match="give --train-size above it"):
        make_spec("digits", "linear", 21, ref, {"validation_size": 10})
    with pytest.raises(TransferbenchError, match="applies to linear probes with the sgd solver"):
        make_spec("digits", "full", 21, ref, {"train_size": "vtab1k"})


def test_the_size_is_in_the_run_key_and_vtab1k_is_1000():
    ref = CheckpointRef("dense", 0.0, "resnet_tiny", "x")
    whole = make_spec("digits", "linear", 21, ref)
    vtab = make_spec("digits", "linear", 21, ref, {"train_size": "vtab1k"})
    assert (vtab.hparams.train_size, vtab.hparams.validation_size) == (1000, 200)  # 800 to train, 200 to choose
    assert "-n1000-v200." in vtab.run_key and "-n" not in whole.run_key
    assert make_spec("digits", "linear", 21, ref, {"train_per_class": 5}).run_key.count("-k5.") == 1
    # seeds of a low-data run extract their own features (their images differ); whole-split seeds share
    assert vtab.extraction_key != make_spec("digits", "linear", 51, ref, {"train_size": "vtab1k"}).extraction_key
    assert whole.extraction_key == make_spec("digits", "linear", 51, ref).extraction_key
    assert "train_size" not in whole.key_material()["hparams"]  # keys from before the field stay valid


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return cifar10_world(tmp_path_factory.mktemp("lowdata"), train_per_class=6, test_per_class=3)


def _run(data, ckpt, out, *extra):
    return main(["run", "--checkpoint", str(ckpt), "--sparsity", "0.5", "--method", "magnitude", "--task",
                 "cifar10", "--data-root", str(data), "--results", str(out), "--image-size", "32", "--workers", "0",
                 "--epochs", "3", *extra])


@pytest.mark.slow
def test_low_data_runs_record_their_subset_and_get_their_own_table(setup):
    root, data, ckpt = setup
    out = root / "out"
    for seed in ("21", "51"):
        assert _run(data, ckpt, out, "--train-size", "20", "--seed", seed) == 0
    assert _run(data, ckpt, out) == 0  # the whole split (60 images)
    records = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}
    low = [r for key, r in records.items() if "-n20." in key]
    assert len(low) == 2 and all(r["config"]["data"]["train_size"] == 20 for r in low)
    subsets = [r["config"]["data"]["train_subset"] for r in low]
    assert all((s["size"], s["per_class_min"], s["per_class_max"]) == (20, 2, 2) for s in subsets)
    assert subsets[0]["indices_sha256"] != subsets[1]["indices_sha256"]
    caches = {r["config"]["feature_cache"]["train"] for r in low}
    assert len(caches) == 2  # each seed's own subset, its own cache entry
    assert all("train_size=20" in r["protocol"] for r in low)
    assert main(["collect", "--results", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["train_size"]) == [0, 20, 20]
    assert len(one_train_size(runs, "test")) == 1  # leaderboards: the whole-split run only
    frames = low_data_frames(runs)
    table = frames[("resnet_tiny", "linear")]
    assert sorted(zip(table["train_size"], table["n"], strict=True)) == [(0, 1), (20, 2)]
    assert "20 images" in (out / "leaderboards" / "low_data_resnet_tiny_linear.md").read_text()
    assert main(["figures", "--results", str(out)]) == 0
    assert (out / "figures" / "low_data_resnet_tiny_linear.png").stat().st_size > 0


@pytest.mark.slow
def test_a_validation_split_is_held_out_of_the_subset_and_its_accuracy_recorded(setup):
    root, data, ckpt = setup
    out = root / "validation"
    assert _run(data, ckpt, out, "--train-size", "30", "--validation-size", "10") == 0
    assert _run(data, ckpt, out, "--train-size", "20") == 0  # the same seed's first 20: the held-out run's train part
    records = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}
    (held,) = [r for key, r in records.items() if "-n30-v10." in key]
    (plain,) = [r for key, r in records.items() if "-n20." in key]
    data_info = held["config"]["data"]
    assert data_info["train_size"] == 20 and data_info["validation_subset"]["size"] == 10
    assert data_info["validation_subset"]["per_class_min"] == 1  # 10 images over 10 classes
    assert data_info["train_subset"]["indices_sha256"] == plain["config"]["data"]["train_subset"]["indices_sha256"]
    assert 0 <= held["metrics"]["validation_top1"] <= 1 and "validation_mean_per_class_acc" in held["metrics"]
    assert held["metrics"]["top1"] == pytest.approx(plain["metrics"]["top1"])  # the same 20 images, seed and head
    assert main(["collect", "--results", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run_key")
    assert runs.loc[held["run_key"], "validation_primary"] == pytest.approx(held["metrics"]["validation_top1"])
    assert np.isnan(runs.loc[plain["run_key"], "validation_primary"])
    assert (runs["train_size"] == 20).all()


def test_a_subset_larger_than_the_split_is_refused_before_any_work(setup, capsys):
    root, data, ckpt = setup
    out = root / "refused"
    assert _run(data, ckpt, out, "--train-size", "vtab1k") == 2
    err = capsys.readouterr().err
    assert "--train-size 1000 exceeds the training split's 60 images" in err
    assert not out.exists()


def test_a_sweep_carries_the_training_set_size_as_an_axis(tmp_path):
    import yaml
    from fixtures_sweep import write_fixture_sweep

    from transferbench.dispatch import load_sweep, plan_sweep

    sweep_file, _ = write_fixture_sweep(tmp_path, full_seeds=())
    raw = yaml.safe_load(sweep_file.read_text())
    sweep_file.write_text(yaml.safe_dump({**raw, "train_sizes": [0, 20, "vtab1k"]}))
    sweep = load_sweep(sweep_file)
    plan = plan_sweep(sweep, tmp_path / "results")
    assert sweep.grid_size("linear") == len(plan.specs) == 2 * 1 * 2 * 3  # checkpoints x tasks x seeds x sizes
    assert Counter((s.hparams.train_size, s.hparams.validation_size) for s in plan.specs) == {
        (0, 0): 4, (20, 0): 4, (1000, 200): 4}
    sweep_file.write_text(yaml.safe_dump({**raw, "train_sizes": [20, -3]}))
    with pytest.raises(TransferbenchError, match="train_sizes holds -3"):
        load_sweep(sweep_file)
    sweep_file.write_text(yaml.safe_dump({**raw, "train_sizes": [20],
                                          "overrides": {"linear": {"train_size": 20}}}))
    with pytest.raises(TransferbenchError, match="train_size is set twice"):
        load_sweep(sweep_file)
