"""`transferbench upstream`: every method trains, writes a loadable checkpoint at the exact sparsity, and
registers it so that `transferbench run --method M --sparsity S` finds it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from transferbench.checkpoints import find_checkpoint, list_checkpoints, load_checkpoint
from transferbench.cli import main
from transferbench.upstream import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    recipe = load_recipe("small_cpu")
    recipe.update(name="tiny", train_size=512, test_size=128, batch_size=64, epochs=10)
    recipe["methods"]["woodfisher"].update(num_grads=4, grad_batch_size=8, block_size=64)
    recipe["methods"]["rigl"]["update_every"] = 10
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("method", ["magnitude", "gmp", "woodfisher", "rigl", "lth", "acdc"])
def test_each_method_writes_a_registered_checkpoint_at_the_exact_sparsity(tiny_recipe, method, capsys):
    assert main(["upstream", "--method", method, "--sparsity", "0.8", "--recipe", str(tiny_recipe)]) == 0
    spec = find_checkpoint(method, 0.8, "resnet_tiny")
    assert spec.source == "local" and spec.upstream_top1 is not None and spec.sha256
    loaded = load_checkpoint(spec.path, expected_sha256=spec.sha256, target_sparsity=0.8, method=method)
    tolerance = {"rigl": 0.002, "lth": 5e-4}.get(method, 1e-4)  # ERK rounds each layer's count, LTH each round's
    expected = 1 - 0.8**7 if method == "lth" else 0.8  # LTH-T: round 7 of 20%, over the convs but conv1 (§4.2)
    assert loaded.method_sparsity.overall == pytest.approx(expected, abs=tolerance)
    assert loaded.format == "ist" and loaded.arch == "resnet_tiny"
    blob = torch.load(spec.path, map_location="cpu", weights_only=True)
    assert blob["metadata"]["method"] == method and blob["metadata"]["recipe"] == "tiny"
    # the stored masks are the zeros: transfer keeps exactly this pattern
    for name, mask in loaded.masks.items():
        weight = dict(loaded.model.named_parameters())[name]
        assert torch.all(weight[~mask] == 0)


def test_cram_gives_one_candidate_per_sparsity_from_one_model(tiny_recipe):
    assert main(["upstream", "--method", "cram", "--sparsity", "0.5", "0.9", "--recipe", str(tiny_recipe)]) == 0
    specs = {s.sparsity: s for s in list_checkpoints() if s.method == "cram" and s.source == "local"}
    assert set(specs) == {0.5, 0.9}
    calibrations = []
    for sparsity, spec in specs.items():
        loaded = load_checkpoint(spec.path)
        assert loaded.sparsity.overall == pytest.approx(sparsity, abs=1e-4)
        blob = torch.load(spec.path, weights_only=True)
        calibrations.append(blob["metadata"]["calibration"])
    # both candidates recalibrated BN on one class-balanced sample of the 512 training images, named by its digest
    from transferbench.pruning.bn import balanced_sample, indices_digest
    from transferbench.upstream import upstream_datasets

    train_set, _ = upstream_datasets(load_recipe(str(tiny_recipe)), None)
    expected = balanced_sample(train_set.dataset.labels, 1000, 42)
    assert calibrations[0] == calibrations[1] == {"size": 512, "seed": 42, "batches": 20, "sampling": "class-balanced",
                                                  "indices_sha256": indices_digest(expected)}


def test_bad_recipe_knobs_are_one_line_errors(tiny_recipe, tmp_path, capsys):
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["epochs"] = 4  # too short for the eight AC/DC phases
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    assert main(["upstream", "--method", "acdc", "--sparsity", "0.9", "--recipe", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: recipe tiny, method acdc") and "Traceback" not in "".join(err)
    assert main(["upstream", "--method", "snip", "--sparsity", "0.9"]) == 2
    assert main(["upstream", "--method", "gmp", "--recipe", "nonexistent"]) == 2


def test_run_on_a_mini_task_builds_and_caches_the_upstream_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    args = ["run", "--method", "acdc", "--task", "digits", "--results", str(tmp_path / "out"), "--epochs", "20",
            "--workers", "0", "--train-missing"]  # without it a missing model is an error (tests/test_defaults.py)
    assert main(args) == 0
    assert "no acdc upstream model at 90% (the mini-suite's default" in capsys.readouterr().err
    (spec,) = [s for s in list_checkpoints() if s.source == "local"]
    assert (spec.method, spec.sparsity, spec.arch) == ("acdc", 0.9, "resnet_tiny")
    mtime = (tmp_path / "ckpts" / "upstream").stat().st_mtime_ns
    record = json.loads(next((tmp_path / "out").glob("runs/*/result.json")).read_text())
    assert record["metrics"]["top1"] > 0.3  # 10 classes: chance is 0.1
    assert main([*args, "--seed", "51"]) == 0  # reuses the registered model
    assert len([s for s in list_checkpoints() if s.source == "local"]) == 1
    assert (tmp_path / "ckpts" / "upstream").stat().st_mtime_ns == mtime


def test_the_imagenet_recipe_builds_every_method_on_resnet50(tmp_path, monkeypatch):
    """The paper-scale recipe is wired to the same code: every method's hooks build on a real ResNet50 with the
    recipe's schedules in steps (training itself needs ImageNet and GPUs)."""
    from dataclasses import replace

    from transferbench.checkpoints import registry, save_checkpoint
    from transferbench.digests import sha256_file
    from transferbench.models import create_model
    from transferbench.pruning.factory import METHODS, build

    recipe = load_recipe("imagenet_resnet50")
    steps_per_epoch = 5005  # 1.28M images / 256
    dense = create_model("resnet50")
    dense_path = tmp_path / "dense.pth"
    save_checkpoint(dense_path, dense, {}, arch="resnet50", dataset="imagenet", metadata={})
    # LTH-T rewinds to the registry's dense row (torchvision's file): a stand-in file under that row's name, with
    # the row's digest made the stand-in's, so the real lookup and check run without torchvision's 100 MB file
    pretrained = registry.published_checkpoint(recipe["methods"]["lth"]["pretrained"])
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    (tmp_path / "ckpts").mkdir()
    torch.save(dense.state_dict(), tmp_path / "ckpts" / pretrained.filename)
    stand_in = replace(pretrained, sha256=sha256_file(tmp_path / "ckpts" / pretrained.filename)[:8])
    table = tuple(stand_in if row.name == pretrained.name else row for row in registry.list_checkpoints(False))
    monkeypatch.setattr(registry, "_table", lambda: table)
    for method in METHODS:
        model = create_model("resnet50")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ctx = {"recipe": recipe, "loader": range(steps_per_epoch), "device": torch.device("cpu"), "seed": 0,
               "train_set": None, "base_lr": 0.1, "dense_model": lambda: dense_path,
               "fisher_batches": lambda num_grads, batch_size: iter(())}
        pruner, optimizer, epochs = build(method, model, opt, 0.9, dict(recipe["methods"][method]), ctx)
        assert epochs >= 1 and pruner.model is model, method
        if method == "acdc":
            assert sorted(pruner.prune_epochs) == [10, 20, 30, 40, 50, 60, 70, 85]
            assert sorted(pruner.restore_epochs) == [15, 25, 35, 45, 55, 65, 75]
        if method == "woodfisher":
            assert pruner.t0 < pruner.t_end < 100 * steps_per_epoch
        if method == "rigl":
            assert pruner.sparsity == pytest.approx(0.9, abs=1e-3)  # ERK masks at the target from step 0
        if method.startswith("cram"):
            assert optimizer.needs_closure


def test_dense_upstream_is_registered_as_dense(tiny_recipe):
    assert main(["upstream", "--method", "dense", "--recipe", str(tiny_recipe)]) == 0
    spec = find_checkpoint("dense", 0.0, "resnet_tiny")
    assert load_checkpoint(spec.path, target_sparsity=0.0).sparsity.overall == 0.0
    assert main(["upstream", "--method", "dense", "--sparsity", "0.5", "--recipe", str(tiny_recipe)]) == 2


def test_one_lth_run_registers_the_ticket_of_every_sparsity_as_its_own_run_would(tiny_recipe, tmp_path):
    """IMP passes every sparsity of the 20% grid on its way: the 50% ticket of a run to 80% is the ticket of a run
    to 50%, bit for bit (θ_p ⊙ m after the same rounds of the same training)."""
    from transferbench.upstream import train_upstream

    multi = train_upstream("lth", [0.5, 0.8], recipe=tiny_recipe, device="cpu", out_dir=tmp_path / "multi")
    [single] = train_upstream("lth", [0.5], recipe=tiny_recipe, device="cpu", out_dir=tmp_path / "single")
    assert [r.spec.sparsity for r in multi] == [0.5, 0.8]
    assert multi[0].sparsity < multi[1].sparsity  # 3 and 7 rounds of 20% of the prunable set (conv1, fc dense)
    a, b = (torch.load(r.path, weights_only=True) for r in (multi[0], single))
    assert a["metadata"]["lth_rounds"] == 3
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for key, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][key]), key


def test_a_diverging_run_stops_with_one_line_and_registers_nothing(tiny_recipe, tmp_path, capsys):
    """The loss is read on the host every few steps (not every step); a NaN/inf still ends the run, named."""
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["optimizer"]["lr"] = 1.0e12
    path = tmp_path / "diverging.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["upstream", "--method", "gmp", "--sparsity", "0.5", "--recipe", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "upstream loss became NaN/inf between steps 0 and" in err
    assert not list((tmp_path / "ckpts").glob("upstream/*.pth"))
