"""Sparse CPU extraction with DeepSparse in its own environment: features equal PyTorch's to float tolerance.

CI builds the DeepSparse virtualenv (.ci/run) and sets TRANSFERBENCH_REQUIRE_DEEPSPARSE=1, so there the tests
that need it cannot be skipped; elsewhere they run when $TRANSFERBENCH_DEEPSPARSE_PYTHON names that Python.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from fixtures_models import write_pruned_checkpoint

from transferbench.checkpoints import load_checkpoint
from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.finetune.features import extract
from transferbench.finetune.sparse_cpu import ENV_PYTHON, extract_deepsparse
from transferbench.models import create_model
from transferbench.sparsity import prunable_weights
from transferbench.tasks import Transformed, get_task, load_split
from transferbench.transforms import build_transform, protocol_transform


@pytest.fixture
def deepsparse_python():
    python = os.environ.get(ENV_PYTHON)
    if not python:
        message = f"${ENV_PYTHON} is not set (a Python with deepsparse==1.8.0; see docs/fast_paths.md)"
        if os.environ.get("TRANSFERBENCH_REQUIRE_DEEPSPARSE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return python


def test_without_the_deepsparse_environment_the_run_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV_PYTHON, raising=False)
    ckpt = tmp_path / "tiny.pth"
    write_pruned_checkpoint(ckpt, sparsity=0.9)
    code = main(["run", "--checkpoint", str(ckpt), "--sparsity", "0.9", "--task", "digits", "--engine",
                 "deepsparse", "--results", str(tmp_path / "out"), "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install deepsparse==1.8.0" in err
    assert not (tmp_path / "out" / "runs").exists()
    monkeypatch.setenv(ENV_PYTHON, str(tmp_path / "nope" / "python"))
    with pytest.raises(TransferbenchError, match="is not an executable Python"):
        extract_deepsparse(create_model("resnet_tiny", num_classes=10), [], 4, 0, "x")


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "full"], "applies to --mode linear and estimate only"),
    (["--precision", "bf16"], "runs in fp32"),
])
def test_engine_flag_combinations(args, message, tmp_path, capsys):
    assert main(["run", "--method", "dense", "--task", "digits", "--engine", "deepsparse", *args,
                 "--results", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resnet50_at_90_percent_features_match_pytorch(deepsparse_python, tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000).eval()
    weights = prunable_weights(model, include_head=False)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    threshold = magnitudes.kthvalue(int(0.9 * magnitudes.numel())).values
    with torch.no_grad():
        for w in weights.values():
            w.mul_(w.abs() > threshold)
        for m in model.modules():  # non-trivial BN statistics, as in a trained network
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    images = [(torch.rand(3, 224, 224), i % 3) for i in range(10)]
    ours, labels = extract_deepsparse(model, images, 4, 0, "deepsparse")
    reference, ref_labels = extract(model, images, 4, torch.device("cpu"), 0, "torch")
    assert ours.shape == reference.shape == (10, 2048)
    assert torch.equal(labels, ref_labels)
    # fp32 with a different summation order: a few 1e-5 relative
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-3)
    assert (ours - reference).abs().max() < 1e-3 * reference.abs().max()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_linear_run_with_deepsparse_matches_the_torch_run(deepsparse_python, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pth"
    write_pruned_checkpoint(ckpt, sparsity=0.9)
    records = {}
    for engine in ("torch", "deepsparse"):
        out = tmp_path / engine
        assert main(["run", "--checkpoint", str(ckpt), "--sparsity", "0.9", "--method", "magnitude", "--task",
                     "digits", "--engine", engine, "--results", str(out), "--epochs", "20", "--workers", "0"]) == 0
        (path,) = (out / "runs").glob("*/result.json")
        records[engine] = json.loads(path.read_text())
    torch_rec, sparse_rec = records["torch"], records["deepsparse"]
    assert sparse_rec["run_key"] != torch_rec["run_key"]  # the engine is part of the run
    assert sparse_rec["config"]["hparams"]["engine"] == "deepsparse"
    assert abs(sparse_rec["metrics"]["top1"] - torch_rec["metrics"]["top1"]) <= 0.01  # same features to 1e-5

    task = get_task("digits")
    loaded = load_checkpoint(ckpt, target_sparsity=0.9)
    cfg = protocol_transform(task, "linear", train=False, image_size=32)
    test = Transformed(load_split(task, "test", None).dataset, build_transform(cfg))
    ours, _ = extract_deepsparse(loaded.model, test, 128, 0, "x")
    reference, _ = extract(loaded.model, test, 128, torch.device("cpu"), 0, "x")
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
