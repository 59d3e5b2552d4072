"""Resumable upstream runs: kill -9 in the middle, run the same command again, and the final checkpoint is
bit-identical to an uninterrupted run's (CPU), registered once; a finished run is skipped when asked again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from transferbench.cli import main
from transferbench.upstream import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    rec = load_recipe("small_cpu")
    rec.update(name="resume", train_size=192, test_size=64, batch_size=32, epochs=10)  # AC/DC needs 10 epochs
    rec["methods"]["woodfisher"].update(num_grads=4, grad_batch_size=8, block_size=64)
    rec["methods"]["rigl"]["update_every"] = 4
    rec["methods"]["lth"]["rate"] = 0.5  # 0.8 → 2 rounds of one epoch from the dense model: LTH rewinds mid-run
    path = tmp_path_factory.mktemp("recipe") / "resume.yaml"
    path.write_text(yaml.safe_dump(rec))
    return path


def _command(method: str, recipe: Path) -> list[str]:
    sparsity = ["0.5", "0.9"] if method == "cram" else ["0.8"]
    return [sys.executable, "-m", "transferbench", "upstream", "--method", method, "--sparsity", *sparsity,
            "--recipe", str(recipe), "--device", "cpu"]


def _env(checkpoints: Path) -> dict[str, str]:
    return dict(os.environ, TRANSFERBENCH_CHECKPOINTS=str(checkpoints), PYTHONHASHSEED="0")


def _checkpoints(folder: Path, method: str) -> list[Path]:
    return sorted((folder / "upstream").glob(f"resnet_tiny_{method}_*_resume_s0.pth"))


def _kill_after_first_epoch(command: list[str], env: dict, work: Path, pattern: str) -> None:
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(work.glob(f"{pattern}/progress.json")):
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# the methods whose resume state holds more than masks: AC/DC's phase and dense snapshot, WoodFisher's Fisher-draw
# generator, LTH-T's round, rewind point and tickets, CrAM's wrapped optimizer and compression-draw generator
@pytest.mark.parametrize("method", ["acdc", "woodfisher", "lth", "cram"])
def test_killed_run_resumes_and_ends_bit_identical(recipe, tmp_path, method):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    command = _command(method, recipe)
    assert subprocess.run(command, env=_env(reference), capture_output=True).returncode == 0

    _kill_after_first_epoch(command, _env(killed), killed / "upstream" / "work", f"resnet_tiny_{method}_*")
    assert not _checkpoints(killed, method), "nothing is registered before the run ends"
    resumed = subprocess.run(command, env=_env(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr

    ours, theirs = _checkpoints(killed, method), _checkpoints(reference, method)
    assert len(ours) == len(theirs) == (2 if method == "cram" else 1)
    for a_path, b_path in zip(ours, theirs, strict=True):
        a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
        assert a["metadata"]["training"]["resumed_from_epoch"] >= 1
        assert b["metadata"]["training"]["resumed_from_epoch"] == 0
        assert a["metadata"]["training"]["epoch_losses"] == b["metadata"]["training"]["epoch_losses"]
        assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
        for key, tensor in a["model_state_dict"].items():
            assert torch.equal(tensor, b["model_state_dict"][key]), f"{method}: {key} differs after resuming"
    assert not list((killed / "upstream" / "work").iterdir()), "the resume state is removed once registered"


def _upstream_args(method: str, recipe: Path) -> list[str]:
    return _command(method, recipe)[3:]  # the CLI's arguments, for main() in this process


def test_a_registered_run_is_skipped_and_force_trains_it_again(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path))
    args = _upstream_args("gmp", recipe)
    assert main(args) == 0
    [path] = _checkpoints(tmp_path, "gmp")
    written = path.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "already registered" in capsys.readouterr().err
    assert path.stat().st_mtime_ns == written
    assert main([*args, "--force"]) == 0
    assert path.stat().st_mtime_ns != written


def test_a_changed_recipe_is_another_run(recipe, tmp_path, monkeypatch, capsys):
    """The run identity covers the recipe: a changed knob is trained, not mistaken for the registered run."""
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path))
    assert main(_upstream_args("gmp", recipe)) == 0
    changed = tmp_path / "resume.yaml"
    rec = yaml.safe_load(recipe.read_text())
    rec["methods"]["gmp"]["t_end"] = 0.5
    changed.write_text(yaml.safe_dump(rec))
    capsys.readouterr()
    assert main(_upstream_args("gmp", changed)) == 0
    err = capsys.readouterr().err
    assert "already registered" not in err and "epoch 1/10" in err


def test_a_state_saved_by_another_number_of_processes_is_refused(tmp_path):
    """Resuming a 2-process run in 1 process would change the per-process batch: one clear line, nothing loaded."""
    from transferbench.errors import TransferbenchError
    from transferbench.models import create_model
    from transferbench.pruning.base import Pruner
    from transferbench.upstream.distributed import World
    from transferbench.upstream.state import load_state, save_state, upstream_progress

    model = create_model("resnet_tiny", num_classes=4)
    opt, pruner = torch.optim.SGD(model.parameters(), lr=0.1), Pruner(model)
    save_state(tmp_path, World(), torch.device("cpu"), epoch=3, epochs=10, model=model, optimizer=opt,
               pruner=pruner, generators={}, train_seconds=1.0, losses=[1.0, 0.9, 0.8])
    assert upstream_progress(tmp_path) == (3, 10)
    state = torch.load(tmp_path / "upstream_state.pt", weights_only=True)
    state["world_size"] = 2
    torch.save(state, tmp_path / "upstream_state.pt")
    with pytest.raises(TransferbenchError, match="run on 2 processes, this job has 1: resume it with the same"):
        load_state(tmp_path, World(), torch.device("cpu"), model=model, optimizer=opt, pruner=pruner, generators={})


def test_precision_and_memory_format_switches_are_recorded_and_make_another_run(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path))
    args = _upstream_args("dense", recipe)
    args[args.index("--sparsity") + 1] = "0"
    assert main(args) == 0
    [path] = _checkpoints(tmp_path, "dense")
    fp32 = torch.load(path, weights_only=True)
    assert main([*args, "--precision", "bf16", "--channels-last", "--workers", "1"]) == 0
    bf16 = torch.load(path, weights_only=True)
    assert bf16["metadata"]["training"]["loop"] == {"workers": 1, "precision": "bf16", "channels_last": True,
                                                   "sync_bn": False, "loader": "torchvision"}
    assert bf16["metadata"]["training"]["run_identity"] != fp32["metadata"]["training"]["run_identity"]
    weight = next(k for k in fp32["model_state_dict"] if k.startswith("conv1") and k.endswith("weight"))
    assert not torch.equal(bf16["model_state_dict"][weight], fp32["model_state_dict"][weight])  # bf16 forward
    assert bf16["model_state_dict"][weight].dtype == torch.float32  # the checkpoint holds fp32 weights
