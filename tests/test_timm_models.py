"""Any timm architecture as --arch: small random timm models (ViT-Tiny, ConvNeXt-Atto, EfficientNet-Lite0) against
timm itself, their checkpoints (PyTorch and safetensors state dicts), the transformers' prunable set, and runs."""

from __future__ import annotations

import json

import pytest
import torch

timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402  (timm brings safetensors)

from transferbench.checkpoints import load_checkpoint  # noqa: E402
from transferbench.cli import main  # noqa: E402
from transferbench.models import create_model, list_archs, model_class  # noqa: E402
from transferbench.pruning.posttraining import prune_one_shot  # noqa: E402
from transferbench.sparsity import set_weights, sparsity_rule  # noqa: E402

SMALL = ["vit_tiny_patch16_224", "convnext_atto", "efficientnet_lite0"]


def _timm(name: str, num_classes: int = 1000, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = {"dynamic_img_size": True} if name.startswith("vit_") else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs).eval()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_timm_state_dict_loads_and_computes_what_timm_computes(name, suffix, tmp_path):
    reference = _timm(name, num_classes=7)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file(reference.state_dict(), str(path))
    loaded = load_checkpoint(path, arch=name)
    model = loaded.model.eval()
    assert loaded.num_classes == 7 and model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
        features = model.forward_features(x)
        assert features.shape == (2, model_class(name).feature_dim)
        torch.testing.assert_close(features, reference.forward_head(reference.forward_features(x), pre_logits=True))
    head = model.reset_head(3)
    assert model.num_classes == 3 and head is model.head_module() and model(x).shape == (2, 3)
    assert any(p is head.weight for p in model.parameters())  # the new head trains with the backbone


def test_the_projects_architectures_keep_their_names_and_timms_come_with_their_preprocessing():
    assert {"resnet50", "mobilenet", "resnet_tiny"} <= set(list_archs())
    assert model_class("resnet50").__module__ == "transferbench.models.resnet"
    vit = model_class("vit_tiny_patch16_224")
    assert (vit.head_name, vit.interpolation, vit.mean, vit.crop_pct) == ("head", "bicubic", (0.5, 0.5, 0.5), 0.9)
    assert model_class("convnext_atto").head_name == "head.fc"
    from transferbench.errors import TransferbenchError

    with pytest.raises(TransferbenchError, match="unknown architecture 'resnet_huge'"):
        model_class("resnet_huge")


def test_a_vision_transformers_prunable_set_is_its_blocks_linear_layers():
    model = create_model("vit_tiny_patch16_224", num_classes=10)
    rule = sparsity_rule("magnitude", arch="vit_tiny_patch16_224")
    assert rule.prunable == "transformer_blocks"
    names = set(set_weights(model, rule.prunable))
    assert len(names) == 12 * 4 and all(n.split(".")[-2] in ("qkv", "proj", "fc1", "fc2") for n in names)
    assert "patch_embed.proj.weight" not in names and "head.weight" not in names
    assert sparsity_rule("magnitude", arch="convnext_atto").prunable == "all_conv_fc"  # CNNs as before


def _pruned_vit(path, sparsity: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224")  # its state dict is timm's; it knows which layer is the head
    with torch.no_grad():
        for weight in set_weights(model, "transformer_blocks").values():
            threshold = weight.abs().flatten().kthvalue(int(sparsity * weight.numel())).values
            weight[weight.abs() <= threshold] = 0
    save_file(model.state_dict(), str(path))
    return model


def test_the_registry_gate_reads_a_transformers_sparsity_over_its_blocks(tmp_path):
    _pruned_vit(tmp_path / "vit50.safetensors")
    loaded = load_checkpoint(tmp_path / "vit50.safetensors", arch="vit_tiny_patch16_224", target_sparsity=0.5,
                             method="magnitude")
    assert loaded.prunable == "transformer_blocks" and loaded.method_sparsity.overall == pytest.approx(0.5, abs=1e-3)
    assert loaded.sparsity.overall < 0.5  # over every weight, the dense patch embedding and head included


def test_wanda_prunes_a_vision_transformers_blocks_from_token_inputs():
    model = create_model("vit_tiny_patch16_224", num_classes=10).eval()
    in_set = set_weights(model, "transformer_blocks")
    blocks = {name: module for name, module in model.named_modules() if f"{name}.weight" in in_set}
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    masks, report = prune_one_shot(model, "wanda", batches, sparsity=0.5, layers=blocks)
    assert len(masks) == 48
    assert len(report) == 48 and all(r.method == "wanda" and r.density == pytest.approx(0.5) for r in report)
    assert float((model.patch_embed.proj.weight == 0).float().mean()) == 0  # outside the set: dense


@pytest.mark.slow
def test_run_takes_a_timm_arch_and_records_its_preprocessing(tmp_path, capsys):
    _pruned_vit(tmp_path / "vit50.safetensors")
    out = tmp_path / "results"
    common = ["--task", "digits", "--results", str(out), "--image-size", "32", "--workers", "0", "--limit", "200"]
    assert main(["run", "--arch", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "vit50.safetensors"),
                 "--method", "magnitude", "--sparsity", "0.5", "--mode", "linear", "--epochs", "3", *common]) == 0
    torch.save(_timm("convnext_atto").state_dict(), tmp_path / "convnext.pth")
    assert main(["run", "--arch", "convnext_atto", "--checkpoint", str(tmp_path / "convnext.pth"), "--method",
                 "dense", "--sparsity", "0", "--mode", "full", "--epochs", "1", "--batch-size", "32", *common]) == 0
    records = {r["arch"]: r for r in (json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json"))}
    vit, convnext = records["vit_tiny_patch16_224"], records["convnext_atto"]
    transform = vit["config"]["transform_test"]
    assert (transform["mean"], transform["interpolation"], transform["resize_size"]) == ([0.5] * 3, "bicubic", 36)
    assert vit["sparsity"]["prunable_set"] == "transformer_blocks"
    assert vit["sparsity"]["upstream_measured_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert convnext["config"]["transform_train"]["augment"] is True and convnext["mode"] == "full"
    assert convnext["config"]["transform_test"]["resize_size"] == round(32 / 0.875)


def test_a_timm_model_runs_at_its_own_resolution_unless_told_otherwise():
    """timm's pretrained config gives the input size: a *_384 ViT transfers at 384 px, a 224 one and this project's
    archs at the protocol's 224, a mini-task at its native size, and --image-size wins over all."""
    from transferbench.runspec import CheckpointRef, make_spec

    def size(arch: str, task: str = "cifar10", **overrides) -> int:
        ref = CheckpointRef(method="dense", sparsity=0.0, arch=arch, identity="sha256:" + "0" * 64, path="x.pth")
        return make_spec(task, "linear", 21, ref, overrides).hparams.image_size

    assert model_class("vit_tiny_patch16_384").input_size == 384
    assert size("vit_tiny_patch16_384") == 384 and size("vit_tiny_patch16_224") == 224 and size("resnet50") == 224
    assert size("vit_tiny_patch16_384", "digits") == 32 and size("vit_tiny_patch16_384", image_size=96) == 96
