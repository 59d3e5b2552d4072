"""Checkpoint formats (round trips with exact sparsity), the registry, and the catalogue of load errors."""

from __future__ import annotations

import hashlib
import math
import re

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from transferbench.checkpoints import (
    CheckpointSpec,
    checkpoint_dir,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_registered,
    local_path,
    peek_arch,
    register_local,
)
from transferbench.checkpoints.resolve import registered_ref, resolve_checkpoint
from transferbench.digests import sha256_file
from transferbench.errors import TransferbenchError
from transferbench.models import create_model, list_archs
from transferbench.runspec import CheckpointRef
from transferbench.sparsity import prunable_weights

METHODS = {"dense", "acdc", "rigl_erk1x", "rigl_erk5x", "str", "woodfisher", "lth_t", "gmp", "cram", "cram_nm", "mfac"}


# ----------------------------------------------------------------------------------------------- helpers


def _scattered_order(numel: int, generator: torch.Generator) -> torch.Tensor:
    """A pseudo-random permutation of range(numel): i ↦ (i·step + offset) mod numel with gcd(step, numel) = 1.

    Much cheaper than randperm on ResNet-50-sized layers, and the positions are spread over the tensor.
    """
    step = next(p for p in (1_000_003, 999_983, 998_077, 7_919) if math.gcd(p, numel) == 1)
    offset = int(torch.randint(numel, (1,), generator=generator))
    return (torch.arange(numel) * step + offset) % numel


def random_masks(model: nn.Module, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Per prunable weight (head included), a bool mask with exactly round(fraction·numel) False entries."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, weight in prunable_weights(model).items():
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        keep[_scattered_order(weight.numel(), generator)[: round(fraction * weight.numel())]] = False
        masks[name] = keep.reshape(weight.shape)
    return masks


def sparsify(model: nn.Module, fraction: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Zero an exact random subset of every prunable weight; returns the masks used."""
    masks = random_masks(model, fraction, seed)
    with torch.no_grad():
        for name, weight in prunable_weights(model).items():
            weight.mul_(masks[name])
    return masks


def expected_zeros(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int((~mask).sum()) for name, mask in masks.items()}


def assert_exact_sparsity(loaded, masks: dict[str, torch.Tensor], head: str = "fc.weight") -> None:
    """Per-layer zero counts and the overall fraction equal what the masks prescribe, exactly."""
    zeros = expected_zeros(masks)
    measured = {name: layer["zeros"] for name, layer in loaded.sparsity.per_layer.items()}
    assert measured == zeros
    total = sum(m.numel() for m in masks.values())
    assert loaded.sparsity.zeros == sum(zeros.values()) and loaded.sparsity.total == total
    assert loaded.sparsity.overall == sum(zeros.values()) / total
    backbone_zeros = sum(z for name, z in zeros.items() if name != head)
    assert loaded.backbone_sparsity.zeros == backbone_zeros
    assert head not in loaded.backbone_sparsity.per_layer
    # Masks cover every backbone Conv/Linear weight (head excluded) and match the prescribed ones.
    assert set(loaded.masks) == set(masks) - {head}
    for name, mask in loaded.masks.items():
        assert mask.dtype == torch.bool and torch.equal(mask, masks[name]), name


def tiny(num_classes: int = 7, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet_tiny", num_classes=num_classes)


def wrap_ist(model: nn.Module, masks: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """The state dict of an IST WrappedLayer model: Conv/Linear under ``_layer`` plus float mask buffers."""
    layers = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    state = {}
    for key, value in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if layer in layers:
            state[f"{prefix}{layer}._layer.{leaf}"] = value.clone()
            mask = masks[key].float() if leaf == "weight" else torch.ones_like(value)
            state[f"{prefix}{layer}._{leaf}_mask"] = mask
        else:
            state[f"{prefix}{key}"] = value.clone()
    return state


@pytest.fixture
def tiny_file(tmp_path):
    """A plain resnet_tiny checkpoint at exactly 50% sparsity per layer, and its masks."""
    model = tiny()
    masks = sparsify(model, 0.5)
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path, masks


@pytest.fixture
def checkpoint_home(tmp_path, monkeypatch):
    home = tmp_path / "ckpts"
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(home))
    return home


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("layout", ["bare", "nested_with_module_prefix"])
def test_plain_state_dict_round_trip(tmp_path, layout):
    model = tiny()
    masks = sparsify(model, 0.7)
    state = model.state_dict()
    if layout == "nested_with_module_prefix":  # DataParallel training script: {'state_dict': {'module.…'}}
        state = {"epoch": 3, "best_acc1": torch.tensor(71.2),
                 "state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "plain.pth"
    torch.save(state, path)

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.format, loaded.num_classes) == ("resnet_tiny", "plain", 7)
    assert loaded.sha256 == sha256_file(path) and loaded.path == path
    assert_exact_sparsity(loaded, masks)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_torch_prune_round_trip_uses_the_stored_masks(tmp_path):
    model = tiny()
    masks = random_masks(model, 0.8, seed=3)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            prune.custom_from_mask(module, "weight", masks[f"{name}.weight"])
    state = model.state_dict()
    assert "conv1.weight_orig" in state and "conv1.weight_mask" in state and "conv1.weight" not in state
    # A kept weight that happens to be 0: the stored mask, not the zero pattern, must decide.
    state["conv1.weight_orig"].view(-1)[masks["conv1.weight"].view(-1).nonzero()[0]] = 0.0
    path = tmp_path / "lth.pth"
    torch.save(state, path)

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.format) == ("resnet_tiny", "torch_prune")
    assert torch.equal(loaded.masks["conv1.weight"], masks["conv1.weight"])
    zeros = expected_zeros(masks)
    assert loaded.sparsity.per_layer["conv1.weight"]["zeros"] == zeros["conv1.weight"] + 1
    assert {k: v["zeros"] for k, v in loaded.sparsity.per_layer.items() if k != "conv1.weight"} == {
        k: v for k, v in zeros.items() if k != "conv1.weight"
    }
    for key, orig in state.items():
        if key.endswith(".weight_orig"):
            name = key.removesuffix("_orig")
            assert torch.equal(loaded.model.state_dict()[name], orig * masks[name])


def test_ist_wrapped_round_trip_with_module_prefix_and_masks(tmp_path):
    model = tiny()
    masks = sparsify(model, 0.9, seed=5)
    state = wrap_ist(model, masks)
    # A save between an optimizer step and re-masking: pruned weights are not yet zero in the file.
    state["module.layer1.0.conv1._layer.weight"] += 0.25
    path = tmp_path / "acdc.pth"
    torch.save({"model_config": {"arch": "resnet_tiny", "dataset": "imagenet"}, "model_state_dict": state}, path)

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.format) == ("resnet_tiny", "ist")
    assert loaded.config == {"arch": "resnet_tiny", "dataset": "imagenet"}
    assert_exact_sparsity(loaded, masks)
    assert torch.equal(loaded.model.fc.bias, model.fc.bias)

    with pytest.raises(TransferbenchError, match=r"saved for arch 'resnet_tiny'.*--arch resnet_tiny"):
        load_checkpoint(path, arch="resnet50")


def test_rigl_tf_port_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet50_rigl", num_classes=1000)
    masks = sparsify(model, 0.9, seed=7)
    path = tmp_path / "rigl.pth"
    torch.save(model.state_dict(), path)

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.format) == ("resnet50_rigl", "rigl")
    assert loaded.model.interpolation == "bicubic"
    assert "initial_conv.conv.weight" in loaded.masks and "layer3.block.0.shortcut.conv.weight" in loaded.masks
    assert_exact_sparsity(loaded, masks)
    assert load_checkpoint(path, fmt="plain").format == "rigl"  # TF-port names are a plain state dict too


def str_checkpoint(model: nn.Module, fraction: float, seed: int):
    """STR-style tensors with known zeros: |W| ≤ sigmoid(s) exactly on the pruned entries of each layer.

    Returns (state with sparseThreshold entries, masks, expected effective weights).
    """
    generator = torch.Generator().manual_seed(seed)
    masks = random_masks(model, fraction, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    effective = {}
    for index, name in enumerate(prunable_weights(model)):
        threshold = 0.01 * (1 + index % 3)
        shape = state[name].shape
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
        kept = sign * (threshold + 0.01 + 0.05 * torch.rand(shape, generator=generator))
        pruned = sign * threshold * 0.9 * torch.rand(shape, generator=generator)
        raw = torch.where(masks[name], kept, pruned)
        state[name] = raw
        state[name.removesuffix("weight") + "sparseThreshold"] = torch.tensor([[math.log(threshold / (1 - threshold))]])
        effective[name] = torch.sign(raw) * torch.relu(raw.abs() - threshold)
    return state, masks, effective


def test_str_round_trip_applies_the_soft_threshold(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet50_str", num_classes=1000)
    state, masks, effective = str_checkpoint(model, 0.95, seed=11)
    path = tmp_path / "str.pth"
    torch.save({"epoch": 99, "arch": "ResNet50", "best_acc1": torch.tensor(70.2),
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.format) == ("resnet50_str", "str")
    assert isinstance(loaded.model.fc, nn.Conv2d) and loaded.model.fc.bias is None
    assert_exact_sparsity(loaded, masks)
    loaded_state = loaded.model.state_dict()
    for name, expected in effective.items():
        torch.testing.assert_close(loaded_state[name], expected, rtol=0, atol=1e-6)
        assert torch.equal(torch.sign(loaded_state[name])[masks[name]], torch.sign(state[name])[masks[name]])


@pytest.mark.parametrize("arch", ["mobilenet", "mobilenet_str"])
def test_mobilenet_ist_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=1000)
    masks = sparsify(model, 0.75, seed=13)
    path = tmp_path / f"{arch}.pth"
    torch.save({"model_config": {"arch": arch, "dataset": "imagenet"}, "model_state_dict": wrap_ist(model, masks)},
               path)

    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.format, loaded.num_classes) == (arch, "ist", 1000)
    assert "model.1.0.weight" in loaded.masks  # the depthwise conv of the first separable block is masked
    assert_exact_sparsity(loaded, masks)
    # Without the container the keys alone identify the arch (the 1×1-conv head marks STR).
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert load_checkpoint(tmp_path / "bare.pth").arch == arch


# --------------------------------------------------------------------------------------------- registry


def test_table_has_every_method_and_the_published_sparsities():
    table = list_checkpoints(include_local=False)
    assert {s.method for s in table} == METHODS

    def sparsities(method: str, family: str) -> set[float]:
        return {s.sparsity for s in table if s.method == method and s.family == family}

    assert sparsities("dense", "resnet50") == {0.0}
    assert sparsities("acdc", "resnet50") == {0.8, 0.9, 0.95, 0.98}
    for method in ("rigl_erk1x", "rigl_erk5x", "woodfisher", "lth_t", "gmp"):
        assert sparsities(method, "resnet50") == {0.8, 0.9, 0.95}, method
    assert sparsities("str", "resnet50") == {0.8, 0.9, 0.95, 0.98}
    assert sparsities("cram", "resnet50") == {0.0, 0.8, 0.9}  # the dense CrAM+-Multi file and its one-shot rows
    assert sparsities("cram_nm", "resnet50") == {0.0, 0.5}  # CrAM+-N:M, dense and 2:4
    assert sparsities("dense", "mobilenet") == {0.0}
    assert sparsities("acdc", "mobilenet") == {0.3, 0.4, 0.5, 0.75, 0.9}
    assert sparsities("mfac", "mobilenet") == {0.75, 0.89}
    assert sparsities("str", "mobilenet") == {0.75, 0.9}


def test_table_rows_are_valid():
    table = list_checkpoints(include_local=False)
    archs = set(list_archs())
    assert len({s.name for s in table}) == len(table)
    for spec in table:
        assert spec.arch in archs, spec.name
        assert spec.source == "table" and spec.path is None and spec.filename
        assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{8,64}", spec.sha256), spec.name
        assert spec.oneshot == (spec.method.startswith("cram") and spec.sparsity > 0), spec.name
        assert (spec.url is None) == (spec.method == "lth_t"), spec.name
        assert spec.upstream_top1 is None or 40 < spec.upstream_top1 < 80, spec.name
        assert spec.format in ("auto", "plain", "rigl", "torch_prune", "ist", "str"), spec.name
        if spec.method.startswith("rigl"):
            assert spec.arch == "resnet50_rigl"
        if spec.method == "str":
            assert spec.arch.endswith("_str")
    # Only the one-shot rows share a file: their dense row's, pruned one-shot to each sparsity.
    filenames = [s.filename for s in table if not s.oneshot]
    assert len(set(filenames)) == len(filenames)
    by_name = {s.name: s for s in table}
    for spec in (s for s in table if s.oneshot):
        source = by_name[spec.oneshot_from]
        assert (source.sparsity, source.oneshot, source.filename, source.method) == (0.0, False, spec.filename,
                                                                                     spec.method), spec.name
    dense = find_checkpoint("dense", 0)
    assert dense.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert dense.sha256 == "0676ba61" and dense.filename == "resnet50-0676ba61.pth"
    acdc_top1 = [find_checkpoint("acdc", s).upstream_top1 for s in ("80%", "90%", "95%", "98%")]
    assert acdc_top1 == [76.45, 75.03, 73.14, 68.48]


def test_find_checkpoint_by_fraction_or_percent_and_family():
    assert find_checkpoint("acdc", 0.9) == find_checkpoint("acdc", "90%")
    assert find_checkpoint("acdc", 0.9).arch == "resnet50"
    assert find_checkpoint("str", "90%").arch == "resnet50_str"  # STR/RigL rows count as the resnet50 family
    assert find_checkpoint("rigl_erk5x", 0.95).arch == "resnet50_rigl"
    assert find_checkpoint("str", 0.9, arch="mobilenet").arch == "mobilenet_str"
    assert find_checkpoint("acdc", "75%", arch="mobilenet").name == "mobilenet_acdc_75"
    assert find_checkpoint("cram", 0.8).oneshot


def test_find_checkpoint_errors_name_the_choices():
    with pytest.raises(TransferbenchError, match=r"unknown method 'magic'.*acdc.*woodfisher"):
        find_checkpoint("magic", 0.9)
    with pytest.raises(TransferbenchError, match=r"available: 80%, 90%, 95%, 98%"):
        find_checkpoint("acdc", 0.85)
    with pytest.raises(TransferbenchError, match=r"'mfac' exists for: mobilenet"):
        find_checkpoint("mfac", 0.75)


def test_checkpoint_dir_and_missing_file_message(checkpoint_home):
    assert checkpoint_dir() == checkpoint_home
    spec = find_checkpoint("acdc", 0.9)
    with pytest.raises(TransferbenchError) as err:
        local_path(spec)
    message = str(err.value)
    assert str(checkpoint_home / "resnet50_acdc_90.pth") in message
    assert "https://seafile.ist.ac.at/d/91de9650cfb54b77b7d1/" in message and "--checkpoint PATH" in message
    assert "--checkpoint-dir" in message and "\n" not in message
    with pytest.raises(TransferbenchError, match="not publicly available"):
        local_path(find_checkpoint("lth_t", 0.9))
    checkpoint_home.mkdir()
    (checkpoint_home / "resnet50_acdc_90.pth").write_bytes(b"x")
    assert local_path(spec) == checkpoint_home / "resnet50_acdc_90.pth"
    elsewhere = checkpoint_home.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "resnet50_acdc_90.pth").write_bytes(b"x")
    assert local_path(spec, directory=elsewhere) == elsewhere / "resnet50_acdc_90.pth"


def test_an_already_downloaded_torchvision_file_is_found_in_the_torch_hub_cache(checkpoint_home, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert local_path(find_checkpoint("dense", 0)) == cached


def test_register_local_makes_a_trained_checkpoint_findable(checkpoint_home, tiny_file):
    path, masks = tiny_file
    spec = CheckpointSpec(name="my_gmp_50", method="gmp", sparsity="50%", arch="resnet_tiny")
    registered = register_local(spec, path)
    assert registered.sha256 == sha256_file(path) and registered.path == str(path.resolve())
    assert registered.sparsity == 0.5 and registered.source == "local"

    rows = yaml.safe_load((checkpoint_home / "local.yaml").read_text())
    assert [row["name"] for row in rows] == ["my_gmp_50"]
    found = find_checkpoint("gmp", 0.5, arch="resnet_tiny")
    assert found == registered and local_path(found) == path.resolve()
    assert find_checkpoint("gmp", 0.9).source == "table"  # the published rows are still there

    loaded = load_registered(found)  # checks the stored sha256 and the registered 50%
    assert loaded.arch == "resnet_tiny" and loaded.sha256 == registered.sha256
    assert_exact_sparsity(loaded, masks)

    # New methods can be registered too; re-registering a name replaces its entry.
    register_local(CheckpointSpec(name="my_gmp_50", method="gmp", sparsity=0.5, arch="resnet_tiny"), path)
    register_local(CheckpointSpec(name="mine", method="my_method", sparsity=0.5, arch="resnet_tiny"), path)
    assert [row["name"] for row in yaml.safe_load((checkpoint_home / "local.yaml").read_text())] == [
        "my_gmp_50", "mine"]
    assert find_checkpoint("my_method", "50%", arch="resnet_tiny").name == "mine"
    with pytest.raises(TransferbenchError, match="does not match"):
        register_local(CheckpointSpec(name="x", method="gmp", sparsity=0.5, arch="resnet_tiny",
                                      sha256="deadbeef"), path)
    with pytest.raises(TransferbenchError, match="unknown architecture"):  # neither this project's nor timm's
        register_local(CheckpointSpec(name="x", method="gmp", sparsity=0.5, arch="resnet_huge"), path)
    with pytest.raises(TransferbenchError, match="does not fit arch 'vgg16'"):  # timm's, but not this file's
        load_checkpoint(path, arch="vgg16")


def test_a_checkpoint_is_identified_by_its_row_name_and_its_file_digest(checkpoint_home, tmp_path):
    path = tmp_path / "mine.pth"
    path.write_bytes(b"the identity reads the bytes, not the model")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    row = register_local(CheckpointSpec(name="my_gmp_50", method="gmp", sparsity=0.5, arch="resnet_tiny"), path)
    for ref in (resolve_checkpoint("gmp", 0.5, "resnet_tiny", None), registered_ref(row)):
        assert ref == CheckpointRef("gmp", 0.5, "resnet_tiny", f"my_gmp_50@sha256:{digest}")
        assert ref.path == str(path.resolve())
    by_path = resolve_checkpoint(None, 0.5, "resnet_tiny", path)  # no row names a file given by path
    assert by_path == CheckpointRef("custom", 0.5, "resnet_tiny", f"sha256:{digest}")
    path.write_bytes(b"re-trained under the same name")  # another file: another identity
    assert registered_ref(row).identity == f"my_gmp_50@sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_a_corrupt_local_registry_is_reported(checkpoint_home):
    checkpoint_home.mkdir()
    (checkpoint_home / "local.yaml").write_text("- {name: x, method: gmp}\n")
    with pytest.raises(TransferbenchError, match=r"local.yaml.*missing"):
        find_checkpoint("gmp", 0.9)


# ------------------------------------------------------------------------------------------ error catalogue


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(TransferbenchError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    message = one_line_error(load_checkpoint, tmp_path / "nope.pth")
    assert "nope.pth" in message and "does not exist" in message


def test_truncated_file(tiny_file, tmp_path):
    path, _ = tiny_file
    cut = tmp_path / "cut.pth"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    message = one_line_error(load_checkpoint, cut)
    assert "cut.pth" in message and "truncated or corrupt" in message and "download it again" in message


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    message = one_line_error(load_checkpoint, path)
    assert "noise.pth" in message and "not a readable PyTorch checkpoint" in message


class PickledTrainer:
    """Stands for a training object pickled into a checkpoint (needs weights_only=False to load)."""

    def __init__(self):
        self.lr = 0.1


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"trainer": PickledTrainer(), "state_dict": tiny().state_dict()}, path)
    message = one_line_error(load_checkpoint, path)
    assert "pickled.pth" in message and "PickledTrainer" in message and "weights_only" in message


def test_checksum(tiny_file):
    path, _ = tiny_file
    digest = sha256_file(path)
    assert load_checkpoint(path, expected_sha256=digest).sha256 == digest
    assert load_checkpoint(path, expected_sha256=digest[:8].upper()).sha256 == digest
    message = one_line_error(load_checkpoint, path, expected_sha256="deadbeef")
    assert "checksum mismatch" in message and "tiny.pth" in message and "deadbeef" in message
    assert "at least 8" in one_line_error(load_checkpoint, path, expected_sha256="abc")


def test_wrong_arch_hints_the_right_one(tiny_file):
    path, _ = tiny_file
    message = one_line_error(load_checkpoint, path, arch="resnet50")
    assert "does not fit arch 'resnet50'" in message and "--arch resnet_tiny" in message
    assert "missing keys" in message and "shapes differ" in message
    message = one_line_error(load_checkpoint, path, arch="vgg16")
    assert "'vgg16'" in message and "resnet_tiny" in message and "tiny.pth" in message


def test_unknown_arch_and_unknown_format(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2)], path)
    assert "unknown checkpoint format" in one_line_error(load_checkpoint, path)
    path = tmp_path / "notensors.pth"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    assert "no tensors" in one_line_error(load_checkpoint, path)
    path = tmp_path / "alien.pth"
    torch.save({"encoder.weight": torch.ones(3, 3)}, path)
    assert "cannot tell the architecture" in one_line_error(load_checkpoint, path)
    path = tmp_path / "amc.pth"
    torch.save({"model_config": {"arch": "mobilenet_amc"}, "model_state_dict": {"conv1.weight": torch.ones(1)}},
               path)
    assert "mobilenet_amc" in one_line_error(load_checkpoint, path)


def test_peek_arch_reads_the_config_or_the_keys(tiny_file, tmp_path):
    path, _ = tiny_file
    assert peek_arch(path) == "resnet_tiny"
    ist = tmp_path / "ist.pth"
    torch.save({"model_config": {"arch": "resnet50_str", "dataset": "imagenet"},
                "model_state_dict": {"conv1.weight": torch.ones(1)}}, ist)
    assert peek_arch(ist) == "resnet50_str"
    alien = tmp_path / "alien.pth"
    torch.save({"encoder.weight": torch.ones(3, 3)}, alien)
    assert peek_arch(alien) is None
    assert "does not exist" in one_line_error(peek_arch, tmp_path / "nope.pth")


def test_explicit_format_must_match(tiny_file):
    path, _ = tiny_file
    assert load_checkpoint(path, fmt="plain").format == "plain"
    message = one_line_error(load_checkpoint, path, fmt="ist")
    assert "is a 'plain' checkpoint, not 'ist'" in message and "'auto'" in message


def test_sparsity_gap_and_allow_flag(tiny_file):
    path, _ = tiny_file  # exactly 50% per layer
    assert load_checkpoint(path, target_sparsity=0.5).sparsity.overall == pytest.approx(0.5, abs=1e-3)
    assert load_checkpoint(path, target_sparsity="50.3%").sparsity.overall < 0.51  # within the 0.5 pp default
    message = one_line_error(load_checkpoint, path, target_sparsity=0.9)
    assert "registered as 90%" in message and "--allow-sparsity-gap" in message and "tiny.pth" in message
    loaded = load_checkpoint(path, target_sparsity=0.9, allow_sparsity_gap=True)
    assert loaded.sparsity.overall == pytest.approx(0.5, abs=1e-3)
    assert load_checkpoint(path, target_sparsity=0.6, max_gap=0.2).arch == "resnet_tiny"


# ------------------------------------------------------------------- per-method sparsity: the registry gate


def test_every_row_names_the_weights_its_method_prunes():
    for spec in list_checkpoints(include_local=False):
        expected = "conv_except_first" if spec.method == "lth_t" else "all_conv_fc"  # §0.1
        assert spec.prunable == expected == spec.sparsity_rule.prunable, spec.name
    assert find_checkpoint("lth_t", 0.9).sparsity_rule.expected(0.9) == pytest.approx(1 - 0.8**10)
    assert CheckpointSpec("mine", "lth", 0.9, "resnet_tiny").sparsity_rule.prunable == "conv_except_first"
    with pytest.raises(TransferbenchError, match=r"prunable 'convs'.*all_conv_fc"):
        CheckpointSpec.from_row({"name": "x", "method": "acdc", "sparsity": 0.9, "arch": "resnet50",
                                 "prunable": "convs"}, "table.yaml", "table")


def lth_t_ticket(path, rounds: int, seed: int = 0) -> nn.Module:
    """An authentic-layout LTH-T ticket, made by Chen et al.'s own calls: conv1 and fc dense, every other conv
    pruned by ``prune.global_unstructured(L1Unstructured, amount=0.2)`` ``rounds`` times, saved with the
    torch.nn.utils.prune keys (weight_orig + weight_mask) under ``state_dict`` as their checkpoints are."""
    model = tiny(seed=seed)
    convs = [(m, "weight") for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name != "conv1"]
    for _ in range(rounds):
        prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=0.2)
    torch.save({"state": rounds, "state_dict": model.state_dict()}, path)
    return model


@pytest.mark.parametrize(("registered", "rounds"), [(0.8, 7), (0.9, 10), (0.95, 13)])
def test_an_authentic_lth_t_ticket_passes_the_gate_at_its_nominal_sparsity(tmp_path, registered, rounds):
    path = tmp_path / "ticket.pth"
    lth_t_ticket(path, rounds)
    loaded = load_checkpoint(path, target_sparsity=registered, method="lth_t")
    assert loaded.format == "torch_prune" and loaded.prunable == "conv_except_first"
    assert loaded.method_sparsity.overall == pytest.approx(1 - 0.8**rounds, abs=2e-4)
    assert loaded.sparsity.per_layer["conv1.weight"]["zeros"] == loaded.sparsity.per_layer["fc.weight"]["zeros"] == 0
    assert loaded.sparsity.overall < loaded.method_sparsity.overall - 0.01  # over every weight it reads lower
    # the gate of every other method (all Conv/Linear weights against the nominal value) refuses the same file
    message = one_line_error(load_checkpoint, path, target_sparsity=registered)
    assert f"registered as {round(registered * 100)}%" in message and "(all_conv_fc)" in message


def test_a_file_pruned_otherwise_fails_the_lth_t_gate(tmp_path):
    path = tmp_path / "round7.pth"
    lth_t_ticket(path, 7)  # a real ticket, but the 80% one
    message = one_line_error(load_checkpoint, path, target_sparsity=0.9, method="lth_t")
    assert "registered as 90%, which means 89.26% there (rounds rule)" in message and "(conv_except_first)" in message
    lth_t_ticket(path, 14)  # the other reading of "95%": 95.60%, 1.1 pp from round 13's 94.50%
    assert "which means 94.50%" in one_line_error(load_checkpoint, path, target_sparsity=0.95, method="lth_t")

    model = tiny()
    sparsify(model, 0.8926)  # 89.26% in every layer, conv1 and fc included: right figure, wrong method
    torch.save(model.state_dict(), path)
    message = one_line_error(load_checkpoint, path, target_sparsity=0.9, method="lth_t")
    assert "zeros in the weights lth_t keeps dense (outside conv_except_first: conv1.weight, fc.weight)" in message
    assert "--allow-sparsity-gap" in message
    loaded = load_checkpoint(path, target_sparsity=0.9, method="lth_t", allow_sparsity_gap=True)
    assert loaded.method_sparsity.overall == pytest.approx(0.8926, abs=1e-3)


def test_a_registered_lth_t_ticket_loads_through_its_row(checkpoint_home, tmp_path):
    path = tmp_path / "ticket.pth"
    lth_t_ticket(path, 10)
    spec = register_local(CheckpointSpec("my_lth_t_90", "lth_t", 0.9, "resnet_tiny"), path)
    loaded = load_registered(find_checkpoint("lth_t", 0.9, arch="resnet_tiny"))
    assert spec.prunable is None and loaded.prunable == "conv_except_first"  # the method's own set
    row = register_local(CheckpointSpec("my_lth_t_90", "lth_t", 0.9, "resnet_tiny", prunable="all_conv_fc"), path)
    assert row.prunable == "all_conv_fc"  # a row may say otherwise, and is then held to it
    with pytest.raises(TransferbenchError, match="registered as 90%"):
        load_registered(find_checkpoint("lth_t", 0.9, arch="resnet_tiny"))


STR_LEARNED = {0.8: 0.8127, 0.9: 0.9023, 0.95: 0.9515, 0.98: 0.9805}  # STR README, ResNet-50 (§7)


def str_file(path, sparsity: float) -> None:
    """STR's layout: a 1×1-conv head, every layer pruned (conv1 and fc too), a learned per-layer budget — here one
    global magnitude threshold over all layers, which leaves the layers unequally sparse."""
    torch.manual_seed(0)
    model = create_model("mobilenet_str", num_classes=1000)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    total = sum(m.weight.numel() for m, _ in layers)
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=round(sparsity * total))
    for module, _ in layers:
        prune.remove(module, "weight")
    torch.save(model.state_dict(), path)


def test_str_checkpoints_pass_at_their_learned_sparsity_and_a_wrong_file_still_fails(tmp_path):
    path = tmp_path / "str.pth"
    str_file(path, STR_LEARNED[0.8])
    loaded = load_checkpoint(path, target_sparsity=0.8, method="str")
    assert loaded.arch == "mobilenet_str" and loaded.prunable == "all_conv_fc"
    assert loaded.method_sparsity.overall == loaded.sparsity.overall == pytest.approx(0.8127, abs=1e-6)
    assert "fc.weight" in loaded.method_sparsity.per_layer  # STR prunes its 1×1-conv head
    assert "registered as 80%" in one_line_error(load_checkpoint, path, target_sparsity=0.8)  # nominal: 1.27 pp
    assert "1.50 pp" in one_line_error(load_checkpoint, path, target_sparsity=0.9, method="str")
    str_file(path, STR_LEARNED[0.9])
    assert "registered as 80%" in one_line_error(load_checkpoint, path, target_sparsity=0.8, method="str")
    # every learned sparsity passes at its own row, and at no other: the tolerance is under half the gap
    rows = [s for s in list_checkpoints(include_local=False) if s.method == "str" and s.family == "resnet50"]
    for learned in STR_LEARNED.values():
        passing = [s.sparsity for s in rows
                   if abs(learned - s.sparsity_rule.expected(s.sparsity)) <= s.sparsity_rule.allowed_gap(0.005)]
        assert passing == [min(STR_LEARNED, key=lambda nominal: abs(nominal - learned))], learned


@pytest.mark.parametrize("ist_format", [True, False])
def test_a_file_without_sparsity_takes_what_it_measures_over_its_methods_set(tmp_path, ist_format):
    """`run --checkpoint F` without --sparsity: the target is the file's zero fraction over the weights its method
    prunes (all conv and linear weights by default, LTH's convolutions but the stem), to a whole percent."""
    from fixtures_models import write_pruned_checkpoint

    path = tmp_path / "pruned.pth"
    masks = write_pruned_checkpoint(path, sparsity=0.37, ist_format=ist_format)  # global magnitude, head included
    ref = resolve_checkpoint(None, None, "resnet_tiny", path)
    assert (ref.method, ref.sparsity) == ("custom", 0.37)
    convs = [m for name, m in masks.items() if m.dim() == 4][1:]  # LTH's set: every conv but the first
    lth = 1 - sum(int(m.sum()) for m in convs) / sum(m.numel() for m in convs)
    assert resolve_checkpoint("lth", None, "resnet_tiny", path).sparsity == round(lth, 2) != 0.37
    assert resolve_checkpoint(None, "90%", "resnet_tiny", path).sparsity == 0.9  # a given target stays the target
