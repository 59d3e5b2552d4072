"""Multi-label runs end to end (the bias study's setup: one sigmoid output per attribute) on the offline `faces`
task: what the records and predictions hold, checked against the task's own splits, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_models import write_pruned_checkpoint

from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.finetune.full import training_loss
from transferbench.metrics import multilabel_metrics
from transferbench.tasks import load_split
from transferbench.tasks.limit import limit_split

LIMIT = 160


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    checkpoint = root / "tiny_50.pth"
    write_pruned_checkpoint(checkpoint, sparsity=0.5)
    out = root / "results"
    for mode, epochs in (("linear", 5), ("full", 2)):
        assert main(_args(checkpoint, out, "--mode", mode, "--set", f"epochs={epochs}")) == 0
    return checkpoint, out


def _args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", str(checkpoint), "--sparsity", "0.5", "--method", "magnitude", "--task", "faces",
            "--results", str(out), "--workers", "0", "--limit", str(LIMIT), *extra]


def _run(out: Path, mode: str, method: str = "") -> tuple[dict, dict]:
    (folder,) = [p for p in (out / "runs").iterdir()
                 if (f".{mode}-" in p.name or f".{mode}." in p.name) and p.name.startswith(f"faces.{method}")]
    with np.load(folder / "predictions.npz") as npz:
        return json.loads((folder / "result.json").read_text()), {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_a_multilabel_run_records_its_attribute_accuracy_and_what_the_bias_report_needs(results, mode):
    _, out = results
    record, arrays = _run(out, mode)
    train, test, validation = (limit_split(load_split("faces", s, None), LIMIT)
                               for s in ("train", "test", "validation"))
    assert arrays["logits"].shape == arrays["labels"].shape == (LIMIT, len(test.classes))
    np.testing.assert_array_equal(arrays["labels"], test.labels)
    expected = multilabel_metrics(arrays["logits"], arrays["labels"])
    assert record["metrics"]["top1"] == pytest.approx(((arrays["logits"] > 0) == test.labels).mean())
    assert record["metrics"]["mean_per_class_acc"] == pytest.approx(expected["mean_per_class_acc"])
    assert record["metrics"]["targets"] == "multilabel"
    np.testing.assert_array_equal(arrays["attributes"], test.attributes)
    assert list(arrays["attribute_names"]) == list(test.attribute_names) and list(arrays["ids"]) == list(test.ids)
    y = np.asarray(train.attributes, dtype=np.int64)
    np.testing.assert_array_equal(arrays["train_cooccurrence"], y.T @ y)
    assert int(arrays["train_count"]) == LIMIT
    assert arrays["validation_logits"].shape == (LIMIT, len(test.classes))
    np.testing.assert_array_equal(arrays["validation_labels"], validation.labels)
    assert record["config"]["data"]["validation_size"] == LIMIT


def test_a_backdoor_variants_cue_settings_are_in_its_run_key_and_no_other_tasks_key_changes():
    from transferbench.runspec import CheckpointRef, make_spec

    ref = CheckpointRef(method="m", sparsity=0.5, arch="resnet_tiny", identity="x", path="x.pth")
    material = make_spec("faces-smiling-grayscale", "full", 21, ref).key_material()
    assert material["backdoors"]["train_fractions"]["Smiling"] == [0.05, 0.95]
    assert "backdoors" not in make_spec("faces-smiling", "full", 21, ref).key_material()
    assert "backdoors" not in make_spec("digits", "full", 21, ref).key_material()


def test_full_fine_tuning_of_a_multilabel_task_minimises_the_mean_binary_cross_entropy():
    logits, targets = torch.randn(6, 4), torch.randint(0, 2, (6, 4))
    assert training_loss(logits, targets) == pytest.approx(float(torch.nn.BCEWithLogitsLoss()(logits, targets.float())))
    classes = torch.randint(0, 4, (6,))
    assert training_loss(logits, classes) == pytest.approx(float(F.cross_entropy(logits, classes)))


@pytest.mark.parametrize("flags", [("--mode", "estimate"), ("--solver", "lbfgs"), ("--train-size", "100")])
def test_what_a_multilabel_task_cannot_run_is_one_line_and_writes_nothing(results, tmp_path, capsys, flags):
    checkpoint, _ = results
    assert main(_args(checkpoint, tmp_path / "out", *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multi-label task faces" in err[0] and flags[0] in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_model_trained_on_faces_is_evaluated_with_its_own_head_into_a_record_the_bias_report_reads(tmp_path,
                                                                                                   monkeypatch,
                                                                                                   capsys):
    """`run --mode evaluate`: the bias study's models from scratch get records and predictions without training;
    its accuracy is the one the upstream run measured on the same test split with the same transform."""
    import yaml

    from transferbench.checkpoints.registry import find_checkpoint
    from transferbench.report.bias_report import bias_report
    from transferbench.upstream import load_recipe

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    recipe = load_recipe("celeba_cpu")
    recipe.update(name="tinyfaces", train_size=256, batch_size=32, epochs=3)
    recipe["methods"]["gmp"]["prune_epochs"] = [1, 1, 2]
    (tmp_path / "tinyfaces.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "results"
    for method, sparsity in (("dense", "0"), ("gmp", "0.8")):
        assert main(["upstream", "--method", method, "--sparsity", sparsity, "--recipe",
                     str(tmp_path / "tinyfaces.yaml")]) == 0
        assert main(["run", "--task", "faces", "--method", method, "--sparsity", sparsity, "--mode", "evaluate",
                     "--results", str(out), "--workers", "0", "--seed", "0"]) == 0  # the seed it was trained with
    spec = find_checkpoint("gmp", 0.8, "resnet_tiny", trained_for="faces")
    with pytest.raises(TransferbenchError, match="no 'gmp' checkpoint at 80%"):  # never in place of a mini-suite model
        find_checkpoint("gmp", 0.8, "resnet_tiny")
    upstream_top1 = torch.load(spec.path, map_location="cpu", weights_only=True)["metadata"]["upstream_top1"]
    record, arrays = _run(out, "evaluate", "gmp")
    assert record["mode"] == "evaluate" and record["curve"] == []
    assert record["metrics"]["top1"] == pytest.approx(upstream_top1, abs=1e-6)
    assert arrays["logits"].shape == (1000, 8) and arrays["validation_logits"].shape == (500, 8)
    report = bias_report(out)
    assert "2 run(s)" in report.summary and (out / "bias" / "summary.csv").exists()

    # refused in one line, nothing written: no gmp model trained for digits; a seed other than the model's own
    assert main(["run", "--task", "digits", "--method", "gmp", "--sparsity", "0.8", "--mode", "evaluate",
                 "--results", str(tmp_path / "other"), "--workers", "0"]) == 2
    assert main(["run", "--task", "faces", "--method", "gmp", "--sparsity", "0.8", "--mode", "evaluate",
                 "--results", str(tmp_path / "other"), "--workers", "0", "--seed", "21"]) == 2
    assert "evaluate it with --seed 0" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_the_study_on_a_celeba_fixture_in_the_official_files(tmp_path, monkeypatch):
    """The CelebA commands on a small CelebA in its official file formats: a CPU-scale model trained from scratch
    (the study's setting), scored with its own head; a sparse checkpoint fine-tuned on the 40 attributes and on a
    backdoor variant (the benchmark's); then the bias report over all of them."""
    import yaml
    from fixtures_celeba import write_celeba

    from transferbench.report.bias_report import bias_report
    from transferbench.upstream import load_recipe

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    data = tmp_path / "data"
    write_celeba(data, n=80)
    recipe = load_recipe("celeba_cpu")
    recipe.update(name="tinyceleba", dataset="celeba", epochs=2, batch_size=16)
    recipe["methods"]["gmp"]["prune_epochs"] = [1, 1, 1]
    (tmp_path / "tinyceleba.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["upstream", "--method", "gmp", "--sparsity", "0.8", "--recipe", str(tmp_path / "tinyceleba.yaml"),
                 "--data-root", str(data)]) == 0
    out = tmp_path / "results"
    common = ["--data-root", str(data), "--results", str(out), "--workers", "0", "--image-size", "32"]
    assert main(["run", "--task", "celeba", "--method", "gmp", "--sparsity", "0.8", "--arch", "resnet_tiny",
                 "--mode", "evaluate", "--seed", "0", *common]) == 0
    checkpoint = tmp_path / "tiny_50.pth"
    write_pruned_checkpoint(checkpoint, sparsity=0.5)
    for task in ("celeba", "celeba-blond_hair-yellow_square"):
        assert main(["run", "--task", task, "--checkpoint", str(checkpoint), "--method", "magnitude", "--sparsity",
                     "0.5", "--mode", "full", "--set", "epochs=1", *common]) == 0
    runs = sorted(p.name.split(".")[0] + "." + p.name.split(".")[3] for p in (out / "runs").iterdir())
    assert runs == ["celeba-blond_hair-yellow_square.full", "celeba.evaluate", "celeba.full"]
    (backdoor_run,) = (out / "runs").glob("celeba-blond_hair-yellow_square.*")
    with np.load(backdoor_run / "predictions.npz") as npz:
        assert npz["logits"].shape[1] == 1 and list(npz["classes"]) == ["Blond_Hair"]
        assert npz["backdoored"].dtype == bool and npz["backdoored"].shape == (len(npz["labels"]),)
        data = json.loads((backdoor_run / "result.json").read_text())["config"]["data"]
        assert data["backdoored_test"] == int(npz["backdoored"].sum())  # the record says how many carry the cue
    report = bias_report(out)
    assert "3 run(s)" in report.summary, report.summary


def test_the_transfer_report_leaves_the_study_tasks_to_report_bias(results):
    """A results root with transfer runs and the study's: the leaderboards' tasks are the transfer ones (a faces
    column would change every method's mean over tasks); the tidy table keeps every run."""
    from fixtures_records import write_completed

    from transferbench.report.build import read_runs
    from transferbench.runspec import CheckpointRef, make_spec

    _, out = results
    ref = CheckpointRef(method="magnitude", sparsity=0.5, arch="resnet_tiny", identity="x", path="x.pth")
    write_completed(out, make_spec("digits", "linear", 21, ref))
    report_runs = read_runs(out)
    assert set(report_runs.collection.runs["task"]) == {"digits", "faces"}
    assert set(report_runs.runs["task"]) == {"digits"}
