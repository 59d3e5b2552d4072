"""Data-parallel upstream training (gloo on CPU): 2 processes × batch B/2 train the same model as 1 process ×
batch B, for every method, after 40 steps: weights equal within float64-then-float32 rounding and
masks exactly equal. The control: without BatchNorm over the global batch the two differ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from transferbench.pruning.factory import METHODS
from transferbench.upstream import load_recipe

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("upstream_ddp_driver.py")
RUNS = [*METHODS, "dense:per-gpu-bn"]


def _tiny_recipe(path: Path) -> Path:
    recipe = load_recipe("small_cpu")
    # 64 images in global batches of 16: 4 steps an epoch, 10 epochs = 40 steps (AC/DC needs 10 for its phases;
    # LTH: rounds of one epoch).
    # Two gloo processes on two cores take about 4x one process's time (an all-reduce per BatchNorm layer a step)
    recipe.update(name="ddp", train_size=64, test_size=64, batch_size=16, epochs=10, image_size=16)
    recipe["methods"]["woodfisher"].update(num_grads=4, grad_batch_size=8, block_size=64)
    recipe["methods"]["rigl"]["update_every"] = 10
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(tmp: Path, recipe: Path, processes: int) -> dict[str, list[str]]:
    out = tmp / f"runs{processes}.json"
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = dict(os.environ, TRANSFERBENCH_CHECKPOINTS=str(tmp / f"ckpts{processes}"), OMP_NUM_THREADS="1",
               DDP_DRIVER_LOG="tensorboard")
    done = subprocess.run([*launcher, str(DRIVER), str(recipe), str(out), *RUNS], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = _tiny_recipe(tmp / "ddp.yaml")
    return _train(tmp, recipe, 1), _train(tmp, recipe, 2)


def _state(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_with_half_batches_train_the_same_model_as_one(checkpoints, method):
    single, double = checkpoints
    assert len(single[method]) == len(double[method]) >= 1
    for one, two in zip(single[method], double[method], strict=True):
        a, b = _state(one), _state(two)
        assert a.keys() == b.keys()
        masks = [k for k in a if k.endswith("_weight_mask")]
        assert masks, "the checkpoint holds its masks"
        for key in masks:
            assert torch.equal(a[key], b[key]), f"{method}: mask {key} differs"
        for key in a.keys() - set(masks):
            if a[key].is_floating_point():
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{method}: {key}")
            else:
                assert torch.equal(a[key], b[key]), key
        if method != "dense":
            zeros = sum(int((a[k] == 0).sum()) for k in masks) / sum(a[k].numel() for k in masks)
            assert zeros > 0.4, f"{method} pruned nothing: the comparison would be trivial"


def test_only_the_first_process_reports_to_a_tracker(checkpoints):
    """``--log`` under torchrun: one TensorBoard run per upstream run, written by rank 0 alone, with every epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged_steps(checkpoint: str) -> list[int]:
        [run] = _run_folder(checkpoint).glob("tensorboard/*")  # one run, not one per process
        [events] = run.glob("events.out.tfevents.*")  # rank 1 wrote no file of its own
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        return [e.step for e in accumulator.Scalars("train_loss")]

    single, double = checkpoints
    for method in double:
        steps = logged_steps(double[method][0])
        assert steps == logged_steps(single[method][0]) and steps == list(range(len(steps))) and steps, method


def _run_folder(checkpoint: str) -> Path:
    """The driver's out_dir of the run that made ``checkpoint`` (the tracker's folder)."""
    return next(p for p in Path(checkpoint).parents if p.name.startswith("runs"))


def test_without_global_batchnorm_the_processes_train_a_different_model(checkpoints):
    """The control: per-GPU BatchNorm statistics (B/2 per process) change the run, so the test above can fail."""
    single, double = checkpoints
    a, b = _state(single["dense"][0]), _state(double["dense:per-gpu-bn"][0])
    assert max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()) > 1e-3
