"""End-to-end `transferbench run` on tiny real-format data and a real sparse checkpoint file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import cifar10_world, write_pruned_checkpoint

from transferbench.cli import main

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return cifar10_world(tmp_path_factory.mktemp("e2e"))


def _args(data, ckpt, out, *extra):
    return ["run", "--checkpoint", str(ckpt), "--sparsity", "0.5", "--method", "magnitude", "--task",
            "cifar10", "--data-root", str(data), "--results", str(out), "--image-size", "32", "--workers", "0",
            *extra]


def _record(out: Path) -> dict:
    (path,) = (out / "runs").glob("*/result.json")
    return json.loads(path.read_text())


def test_linear_run_writes_one_complete_record_and_reruns_are_noops(setup, capsys):
    root, data, ckpt = setup
    out = root / "out_linear"
    assert main(_args(data, ckpt, out, "--mode", "linear", "--epochs", "30", "--lr", "0.1")) == 0
    rec = _record(out)
    assert rec["status"] == "completed" and rec["schema_version"] == 1
    assert (rec["task"], rec["mode"], rec["method"], rec["arch"], rec["seed"]) == (
        "cifar10", "linear", "magnitude", "resnet_tiny", 21)
    assert rec["target_sparsity"] == 0.5
    assert rec["sparsity"]["upstream_measured"] == pytest.approx(0.5, abs=1e-3)
    assert rec["sparsity"]["backbone_before"] == rec["sparsity"]["backbone_after"]
    assert rec["metrics"]["top1"] > 0.5  # chance is 0.1
    assert 0 <= rec["metrics"]["mean_per_class_acc"] <= 1
    assert len(rec["curve"]) == 30 and rec["config"]["hparams"]["lr_decay_after"] == [9, 19]
    assert rec["config"]["transform_train"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet stats (P1)
    assert rec["config"]["transform_train"]["augment"] is False
    assert rec["config"]["data"] == {"layout": "folders", "root": str(data / "cifar10"), "train_size": 120,
                                     "test_size": 60, "num_classes": 10, "paper_split": True}
    assert {"torch", "torchvision", "numpy"} <= set(rec["versions"])
    preds = np.load(out / "runs" / rec["run_key"] / "predictions.npz")
    assert preds["logits"].shape == (60, 10) and preds["labels"].shape == (60,)
    assert np.mean(preds["logits"].argmax(1) == preds["labels"]) == pytest.approx(rec["metrics"]["top1"])
    assert list(preds["classes"]) == sorted(p.name for p in (data / "cifar10" / "train").iterdir())
    assert not rec["timings"]["features_cached"]
    capsys.readouterr()

    # an identical rerun is a no-op that says where the record is
    mtime = (out / "runs" / rec["run_key"] / "result.json").stat().st_mtime_ns
    assert main(_args(data, ckpt, out, "--mode", "linear", "--epochs", "30", "--lr", "0.1")) == 0
    assert "already done" in capsys.readouterr().out
    assert (out / "runs" / rec["run_key"] / "result.json").stat().st_mtime_ns == mtime

    # another seed reuses the cached features
    assert main(_args(data, ckpt, out, "--mode", "linear", "--epochs", "30", "--lr", "0.1", "--seed", "51")) == 0
    seeds = {json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    assert set(seeds) == {21, 51}
    assert seeds[51]["timings"]["features_cached"] and seeds[51]["timings"]["extraction_s"] == 0.0


def test_lbfgs_solver_run(setup):
    root, data, ckpt = setup
    out = root / "out_lbfgs"
    assert main(_args(data, ckpt, out, "--mode", "linear", "--solver", "lbfgs",
                      "--set", "lbfgs_c_grid=[0.01,1.0,100.0]")) == 0
    rec = _record(out)
    assert ".linear-lbfgs." in rec["run_key"] and rec["metrics"]["chosen_C"] in (0.01, 1.0, 100.0)
    assert rec["metrics"]["top1"] > 0.5


def test_full_run_preserves_the_stored_mask(setup):
    root, data, ckpt = setup
    out = root / "out_full"
    assert main(_args(data, ckpt, out, "--mode", "full", "--epochs", "3", "--lr", "0.05")) == 0
    rec = _record(out)
    sp = rec["sparsity"]
    assert sp["backbone_before"] == sp["backbone_after"] > 0.45
    assert rec["config"]["transform_train"]["augment"] is True
    assert rec["config"]["transform_train"]["mean"] == [0.4914, 0.4822, 0.4465]  # CIFAR-10 stats (P1)
    assert rec["config"]["hparams"]["lr"] == 0.05 and len(rec["curve"]) == 3
    assert not (out / "work" / rec["run_key"]).exists()  # training state removed after success


def test_full_run_numbers_do_not_depend_on_the_number_of_loader_workers(setup, tmp_path):
    """A cluster job's cpus decide its workers; the record must not (augmentation is seeded per sample)."""
    _, data, ckpt = setup
    records = []
    for workers in ("0", "2"):
        args = [*_args(data, ckpt, tmp_path / workers, "--mode", "full", "--epochs", "2", "--lr", "0.05")]
        args[args.index("--workers") + 1] = workers
        assert main(args) == 0
        records.append(_record(tmp_path / workers))
    assert records[0]["run_key"] == records[1]["run_key"]
    assert records[0]["metrics"] == records[1]["metrics"] and records[0]["curve"] == records[1]["curve"]


def test_compiled_linear_run_matches_the_eager_run(setup, tmp_path):
    """--compile (torch.compile) is the same computation: same run, same accuracy, noted in the record."""
    _, data, ckpt = setup
    records = {}
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        assert main(_args(data, ckpt, tmp_path / name, "--mode", "linear", "--epochs", "5", *extra)) == 0
        records[name] = _record(tmp_path / name)
    eager, compiled = records["eager"], records["compiled"]
    assert compiled["run_key"] == eager["run_key"] and compiled["config"]["compiled"] is True
    assert compiled["metrics"]["top1"] == pytest.approx(eager["metrics"]["top1"], abs=0.02)


def test_bf16_runs_are_runs_of_their_own_and_close_to_fp32(setup, tmp_path):
    """--precision bf16 (autocast in extraction, training and evaluation) changes numbers, so it gets its own run
    key; it must still train (close to fp32) and keep the mask in full fine-tuning."""
    _, data, ckpt = setup
    records = {}
    for mode, extra in (("linear", ("--epochs", "30", "--lr", "0.1")), ("full", ("--epochs", "3", "--lr", "0.05"))):
        for precision in ("fp32", "bf16"):
            out = tmp_path / f"{mode}-{precision}"
            assert main(_args(data, ckpt, out, "--mode", mode, "--precision", precision, *extra)) == 0
            records[mode, precision] = _record(out)
    for mode in ("linear", "full"):
        fp32, bf16 = records[mode, "fp32"], records[mode, "bf16"]
        assert bf16["config"]["hparams"]["precision"] == "bf16" and bf16["run_key"] != fp32["run_key"]
        assert bf16["metrics"]["top1"] == pytest.approx(fp32["metrics"]["top1"], abs=0.15)
    # the features really went through bf16 autocast: close to fp32's, not equal
    feats = {p: torch.load(records["linear", p]["config"]["feature_cache"]["test"], weights_only=True)["features"]
             for p in ("fp32", "bf16")}
    assert not torch.equal(feats["fp32"], feats["bf16"])
    torch.testing.assert_close(feats["bf16"], feats["fp32"], rtol=0.05, atol=0.05)
    full = records["full", "bf16"]["sparsity"]
    assert full["backbone_before"] == full["backbone_after"] > 0.45
    assert records["linear", "bf16"]["metrics"]["top1"] > 0.5  # chance is 0.1


def test_cudnn_benchmark_switch_is_recorded_and_off_by_default(setup, tmp_path):
    _, data, ckpt = setup
    for name, extra in (("default", ()), ("autotuned", ("--cudnn-benchmark",))):
        assert main(_args(data, ckpt, tmp_path / name, "--mode", "linear", "--epochs", "2", *extra)) == 0
        autotuned = name == "autotuned"
        config = _record(tmp_path / name)["config"]
        assert config["cudnn_benchmark"] is autotuned
        assert torch.backends.cudnn.benchmark is autotuned and torch.backends.cudnn.deterministic is not autotuned
        # the record says which algorithms ran, and the float policy (true fp32 on this CPU)
        assert config["determinism"]["deterministic_algorithms"] is not autotuned
        assert torch.are_deterministic_algorithms_enabled() is not autotuned
        assert config["precision_policy"] == {"device_type": "cpu", "precision": "fp32", "tf32": False,
                                              "autocast": None}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from transferbench.cli import main; sys.exit(main(sys.argv[1:]))",
            *args]


def test_full_run_resumes_after_sigkill_and_matches_an_uninterrupted_run(setup, tmp_path):
    _, data, ckpt = setup
    extra = ("--mode", "full", "--epochs", "4", "--lr", "0.05")
    reference_out, killed_out = tmp_path / "ref", tmp_path / "killed"
    assert main(_args(data, ckpt, reference_out, *extra)) == 0

    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(_cli(*_args(data, ckpt, killed_out, *extra)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed_out.glob("work/*/train_state.pt")):
        assert proc.poll() is None, "run finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(killed_out.glob("runs/*/result.json"))  # nothing half-written in the results store

    assert subprocess.run(_cli(*_args(data, ckpt, killed_out, *extra)), env=env).returncode == 0
    ref, resumed = _record(reference_out), _record(killed_out)
    assert resumed["timings"]["resumed_from_epoch"] >= 1
    assert resumed["run_key"] == ref["run_key"]
    assert resumed["metrics"] == ref["metrics"]
    assert resumed["curve"] == ref["curve"]
    assert resumed["sparsity"] == ref["sparsity"]
    key = ref["run_key"]
    a = np.load(reference_out / "runs" / key / "predictions.npz")
    b = np.load(killed_out / "runs" / key / "predictions.npz")
    np.testing.assert_array_equal(a["logits"], b["logits"])


def test_rigl_resnet50_checkpoint_runs_end_to_end_with_bicubic_resizing(setup, tmp_path):
    """A real-size RigL TF-port ResNet50 (plain state_dict with its own names), 90% sparse."""
    _, data, _ = setup
    ckpt = tmp_path / "rigl_90.pth"
    write_pruned_checkpoint(ckpt, arch="resnet50_rigl", sparsity=0.9, ist_format=False)
    out = tmp_path / "out"
    args = ["run", "--checkpoint", str(ckpt), "--sparsity", "0.9", "--method", "rigl_erk5x", "--task", "cifar10",
            "--data-root", str(data), "--results", str(out), "--image-size", "32", "--workers", "0", "--epochs", "2"]
    assert main(args) == 0
    rec = _record(out)
    assert rec["arch"] == "resnet50_rigl" and rec["checkpoint"]["format"] in ("rigl", "plain")
    assert rec["config"]["transform_test"]["interpolation"] == "bicubic"
    assert rec["sparsity"]["upstream_measured"] == pytest.approx(0.9, abs=1e-4)
    preds = np.load(out / "runs" / rec["run_key"] / "predictions.npz")
    assert preds["logits"].shape == (60, 10)
