"""A sweep's ``prune:`` entries: one-shot post-training candidates (Wanda, SparseGPT; unstructured and 2:4) of dense
files of any architecture, made in the upstream stage under the names the planner gave them, then transferred, and
the report's leaderboards and figures per architecture."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
import yaml
from fixtures_models import write_pruned_checkpoint
from fixtures_sweep import write_fixture_sweep, write_tiny_recipe

from transferbench.cli import main
from transferbench.digests import sha256_file
from transferbench.dispatch.prune_spec import parse_prune
from transferbench.dispatch.sweep import parse_sweep
from transferbench.errors import TransferbenchError
from transferbench.store import DONE

timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402  (timm brings safetensors)

CALIBRATION = {"size": 8, "seed": 42, "batches": 2, "batch_size": 4}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    return tmp_path / "ckpts"


def calibration_recipe(root):
    """The tiny recipe (small_cpu's data at a few images) with a calibration block of 2 batches of 4."""
    path = write_tiny_recipe(root)
    rec = yaml.safe_load(path.read_text())
    rec.update(name="tinycal", calibration=CALIBRATION)
    path.write_text(yaml.safe_dump(rec))
    return path


def dense_files(root):
    """A dense resnet_tiny file of the project's format and a dense timm ViT-Tiny as a bare safetensors state dict."""
    resnet = root / "tiny_dense.pth"
    write_pruned_checkpoint(resnet, sparsity=0.0, seed=1)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, dynamic_img_size=True)
    save_file(vit.state_dict(), str(root / "vit_t.safetensors"))
    return resnet, root / "vit_t.safetensors"


def test_prune_entries_name_their_products_as_prune_names_its_candidates(tmp_path, home):
    resnet, vit = dense_files(tmp_path)
    recipe = calibration_recipe(tmp_path)
    units = parse_prune([
        {"method": ["wanda", "sparsegpt"], "sparsity": ["50%", 0.7], "from": str(resnet), "arch": "resnet_tiny",
         "calibration": "digits", "samples": 8, "recipe": str(recipe)},
        {"method": "wanda", "pattern": "2:4", "from": str(vit), "arch": "vit_tiny_patch16_224",
         "calibration": "shapes", "recipe": str(recipe)},
    ], "s.yaml")
    digest = sha256_file(resnet)[:8]
    assert [u.products for u in units] == [
        (f"tiny_dense_{digest}_wanda_50_oneshot_tinycal_n8_digits_s42",
         f"tiny_dense_{digest}_wanda_70_oneshot_tinycal_n8_digits_s42"),
        (f"tiny_dense_{digest}_sparsegpt_50_oneshot_tinycal_n8_digits_s42",
         f"tiny_dense_{digest}_sparsegpt_70_oneshot_tinycal_n8_digits_s42"),
        (f"vit_t_{sha256_file(vit)[:8]}_wanda_nm_50_oneshot_tinycal_s42",)]
    assert [(u.method, u.arch, u.calibration_task, u.samples) for u in units] == [
        ("wanda", "resnet_tiny", "digits", 8), ("sparsegpt", "resnet_tiny", "digits", 8),
        ("wanda_nm", "vit_tiny_patch16_224", None, None)]
    assert units[0].source == str(resnet.resolve()) and units[0].single_process
    [magnitude] = parse_prune([{"method": "magnitude", "pattern": "2:4", "from": str(resnet), "arch": "resnet_tiny"}],
                              "s.yaml")  # not "magnitude": the registry's gradual magnitude pruning has that name
    assert magnitude.method == "oneshot_magnitude_nm" and "_oneshot_magnitude_nm_50_oneshot_" in magnitude.name
    # what `transferbench prune` registers for the same flags is what the planner named
    assert main(["prune", "--method", "wanda", "--sparsity", "0.5", "--from", str(resnet), "--arch", "resnet_tiny",
                 "--calibration", "digits", "--samples", "8", "--recipe", str(recipe)]) == 0
    assert (home / "upstream" / f"{units[0].products[0]}.pth").is_file()


@pytest.mark.parametrize(("entry", "expected"), [
    ({"method": "wanda", "sparsity": 0.5, "from": "FILE"}, "a file needs arch:"),
    ({"method": "wanda", "sparsity": 0.5, "from": "no_such_model"}, "no such file, and not the name of a registered"),
    ({"method": "gmp", "sparsity": 0.5, "from": "FILE", "arch": "resnet_tiny"}, "post-training pruners are"),
    ({"method": "wanda", "pattern": "1:4", "from": "FILE", "arch": "resnet_tiny"}, "pattern 1:4"),
    ({"method": "wanda", "pattern": "2:4", "sparsity": 0.7, "from": "FILE", "arch": "resnet_tiny"},
     "keeps half the weights"),
    ({"method": "wanda", "from": "FILE", "arch": "resnet_tiny"}, "give sparsity"),
    ({"method": "wanda", "sparsity": 0, "from": "FILE", "arch": "resnet_tiny"}, "leave the model dense"),
    ({"method": "wanda", "sparsity": 0.5, "from": "FILE", "arch": "resnet_tiny", "calibration": "faces"},
     "multi-label"),
    ({"method": "wanda", "sparsity": 0.5, "from": "FILE", "arch": "resnet_tiny", "calibration": "nope"},
     "unknown task"),
    ({"method": "wanda", "sparsity": 0.5, "from": "FILE", "arch": "resnet_tiny", "samples": 0}, "samples 0"),
    ({"method": "wanda", "sparsity": 0.5, "from": "FILE", "arch": "resnet_tiny", "gpus": 2}, "unknown key(s) gpus"),
    ({"sparsity": 0.5, "from": "FILE"}, "needs method and from"),
])
def test_a_bad_prune_entry_is_one_line_naming_the_sweep(tmp_path, home, entry, expected):
    resnet = tmp_path / "tiny_dense.pth"
    write_pruned_checkpoint(resnet, sparsity=0.0, seed=1)
    entry = {k: str(resnet) if v == "FILE" else v for k, v in entry.items()}
    with pytest.raises(TransferbenchError, match=r"^sweep s\.yaml: ") as err:
        parse_prune([entry], "s.yaml")
    assert expected.lower() in str(err.value).lower() and "\n" not in str(err.value)


def test_a_checkpoint_made_twice_by_prune_entries_is_refused(tmp_path, home):
    sweep_file, _ = write_fixture_sweep(tmp_path)
    spec = yaml.safe_load(sweep_file.read_text())
    resnet = spec["checkpoints"][0]["path"]
    entry = {"method": "wanda", "sparsity": 0.5, "from": resnet, "arch": "resnet_tiny", "calibration": "shapes"}
    spec["prune"] = [entry, {**entry, "sparsity": [0.5, 0.7]}]
    with pytest.raises(TransferbenchError, match=r"make .*_wanda_50_oneshot_small_cpu_s42 more than once"):
        parse_sweep(spec, "s.yaml")


@pytest.mark.slow
def test_a_sweep_prunes_then_transfers_and_reports_per_architecture(tmp_path, home, capsys):
    """Two dense files (a CNN of ours, a timm ViT), three pruners' candidates calibrated on the task itself, made in
    the upstream stage, transferred with linear probes; status says done; the report has a leaderboard and an
    accuracy-vs-sparsity figure for each architecture, one line per pruner."""
    sweep_file, data = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=(), linear_epochs=5)
    resnet, vit = dense_files(tmp_path)
    recipe = calibration_recipe(tmp_path)
    spec = yaml.safe_load(sweep_file.read_text())
    common = {"calibration": "cifar10", "data_root": str(data), "samples": 8, "recipe": str(recipe)}
    spec["prune"] = [{"method": ["wanda", "sparsegpt"], "sparsity": "50%", "from": str(resnet), "arch": "resnet_tiny",
                      **common},
                     {"method": "wanda", "pattern": "2:4", "from": str(vit), "arch": "vit_tiny_patch16_224", **common}]
    spec.pop("checkpoints")  # transfer every candidate
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "[upstream 3/3] preparing wanda_nm 50% vit_tiny_patch16_224 (one-shot from vit_t_" in printed
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [u["state"] for u in status["upstream"]] == [DONE] * 3
    assert sorted((r["method"], r["state"]) for r in status["runs"]) == [
        ("dense", DONE), ("dense", DONE), ("sparsegpt", DONE), ("wanda", DONE), ("wanda_nm", DONE)]
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    assert sorted((r["arch"], r["method"]) for r in records) == [  # each dense source beside its candidates
        ("resnet_tiny", "dense"), ("resnet_tiny", "sparsegpt"), ("resnet_tiny", "wanda"),
        ("vit_tiny_patch16_224", "dense"), ("vit_tiny_patch16_224", "wanda_nm")]
    vit_record = next(r for r in records if r["method"] == "wanda_nm")
    (vit_candidate,) = (home / "upstream").glob("vit_t_*.pth")  # calibrated on images normalised as ViT's config says
    recipe_used = yaml.safe_load(torch.load(vit_candidate, weights_only=True)["metadata"]["recipe_config"])
    assert recipe_used["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert vit_record["sparsity"]["prunable_set"] == "transformer_blocks"
    assert vit_record["sparsity"]["upstream_measured_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert main(["report", "--results", str(out)]) == 0
    figures = {p.name for p in (out / "figures").glob("*.png")}
    for arch, methods in (("resnet_tiny", {"dense", "wanda", "sparsegpt"}),
                          ("vit_tiny_patch16_224", {"dense", "wanda_nm"})):
        board = pd.read_csv(out / "leaderboards" / f"leaderboard_{arch}_linear.csv")
        assert set(board["method"]) == methods and set(board["arch"]) == {arch}
        deltas = board[(board["column"] == "Δ vs dense") & (board["method"] != "dense")]
        assert deltas["mean"].notna().all()  # the dense row is there to compare with
        assert f"{arch}_linear_accuracy_vs_sparsity.png" in figures, (arch, figures)


def test_a_dry_run_plans_one_single_process_job_per_prune_unit_before_the_transfers_that_wait(tmp_path, home, capsys):
    sweep_file, data = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    resnet, _ = dense_files(tmp_path)
    spec = yaml.safe_load(sweep_file.read_text())
    spec["prune"] = [{"method": ["wanda", "sparsegpt"], "sparsity": "50%", "from": str(resnet), "arch": "resnet_tiny",
                      "calibration": "cifar10", "data_root": str(data), "samples": 8}]
    spec.pop("checkpoints")
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--dry-run", "--results", str(out)]) == 0
    printed = capsys.readouterr().out
    [wanda, sparsegpt] = parse_sweep(spec, "s.yaml").upstream
    assert "upstream stage: 2 unit(s) (2 missing); 2 to submit first" in printed
    for unit in (wanda, sparsegpt):
        assert f"{unit.name} ({unit.label}): one SLURM job, 1 node(s) x 1 process(es)" in printed
    assert re.search(r"linear\s+3\s+0\s+0\s+0\s+0\s+0\s+0\s+3\s+0\s+0\s+2\n", printed)  # 2 wait, dense doesn't
    assert "linear: 3 job(s) as 3 array(s) of 1, 1, 1" in printed  # the dense source's, one per unit waited for
    assert not out.exists() and not home.exists()  # a dry run writes nothing
