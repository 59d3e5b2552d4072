"""The CelebA bias study's upstream models (bias_analysis.md §1.2-1.3): ResNet18 as torchvision's, the shipped
celeba recipes against the study's schedules in closed form, the multi-label loop (binary cross-entropy, the
checkpoint chosen on validation data) end to end on the offline `faces` task, and its one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
import yaml

from transferbench.checkpoints import find_checkpoint, load_checkpoint
from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.models import create_model
from transferbench.pruning import factory
from transferbench.pruning.acdc import ACDCPruner
from transferbench.pruning.gmp import GMPPruner
from transferbench.upstream import load_recipe, lr_at
from transferbench.upstream.attributes import attribute_transforms
from transferbench.upstream.optimizers import make_optimizer
from transferbench.upstream.recipes import method_recipe
from transferbench.upstream.selection import BestCheckpoint
from transferbench.upstream.train import upstream_loss

STUDY_RECIPES = ("celeba_resnet18", "celeba_mobilenet")
# The study's pruned modules for ResNet18 (configs/celeba_resnet18_gmp90_ep100.yaml, `modules:`), written out here
# as the independent reference for the layers our resnet18 prunes
STUDY_RESNET18_MODULES = [
    "conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
    "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1", "layer2.1.conv2",
    "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2",
    "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2", "fc",
]
STEPS_PER_EPOCH = 3  # any count: the schedules are in epochs, converted to steps by the factory


# ------------------------------------------------------------------------------------------------ ResNet18


def test_resnet18_is_torchvision_resnet18_on_the_same_weights():
    reference = torchvision.models.resnet18(num_classes=40)
    ours = create_model("resnet18", num_classes=40)
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), reference.eval()(x))
    assert ours.feature_dim == 512 and ours.num_classes == 40


def test_resnet18_prunes_the_studys_modules():
    from transferbench.pruning.masks import prunable_parameters

    names = list(prunable_parameters(create_model("resnet18", num_classes=40), include_head=True))
    assert names == [f"{module}.weight" for module in STUDY_RESNET18_MODULES]


# ------------------------------------------------------------------------------------------------ recipes


def _built(recipe: str, method: str, sparsity: float):
    """(run recipe, pruner, optimizer, epochs) of one entry, built by the factory on a small model."""
    rec, knobs = method_recipe(method, recipe, sparsity=sparsity)
    model = create_model("resnet_tiny", num_classes=8)
    knobs = dict(knobs)
    knobs.pop("init", None)  # train.py's: start from the dense model
    ctx = {"recipe": rec, "loader": range(STEPS_PER_EPOCH), "device": torch.device("cpu"), "seed": 0}
    optimizer = make_optimizer(model.parameters(), {**rec["optimizer"], **knobs.pop("optimizer", {})})
    return (rec, *factory.build(method, model, optimizer, sparsity, knobs, ctx))


def _cubic(epoch: float, target: float, start: float, end: float, initial: float = 0.05) -> float:
    """bias_analysis.md §1.3: s(t) = s_T − (s_T − s_0)(1 − (t − t_0)/(t_end − t_0))^3."""
    return target - (target - initial) * (1 - (epoch - start) / (end - start)) ** 3


@pytest.mark.parametrize("recipe", STUDY_RECIPES)
@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95, 0.98, 0.99, 0.995])
def test_gmp_ri_steps_every_10_epochs_from_10_to_80_on_the_cubic(recipe, sparsity):
    rec, pruner, optimizer, epochs = _built(recipe, "gmp", sparsity)
    assert isinstance(pruner, GMPPruner) and isinstance(optimizer, torch.optim.SGD) and epochs == 100
    assert pruner.prune_steps == [e * STEPS_PER_EPOCH for e in range(10, 81, 10)]
    for epoch in range(10, 81, 10):
        assert pruner.sparsity_at(epoch * STEPS_PER_EPOCH) == pytest.approx(_cubic(epoch, sparsity, 10, 80), abs=1e-12)
    assert pruner.sparsity_at(80 * STEPS_PER_EPOCH) == sparsity and pruner.initial_sparsity == 0.05
    assert rec["optimizer"] == {"lr": 0.256, "momentum": 0.875, "weight_decay": 2**-15}
    assert rec["batch_size"] == 256
    # cosine with 5 warm-up epochs (IST's CosineLR: 0.256·(e+1)/5, then half a cosine to 0 at epoch 100)
    lrs = [lr_at(rec["schedule"], e, 0.256, 100) for e in (0, 4, 5, 52.5, 99)]
    assert lrs == pytest.approx([0.256 / 5, 0.256, 0.256, 0.256 * 0.5 * (1 + math.cos(math.pi * 47 / 95)),
                                 0.256 * 0.5 * (1 + math.cos(math.pi * 94 / 95))])


@pytest.mark.parametrize("recipe", STUDY_RECIPES)
def test_post_training_gmp_is_80_epochs_of_adam_at_1e_4_stepping_every_4_epochs_over_1_to_57(recipe):
    rec, pruner, optimizer, epochs = _built(recipe, "gmp_pt", 0.9)
    _, knobs = method_recipe("gmp_pt", recipe, sparsity=0.9)
    assert knobs["init"] == "dense"  # from the dense entry's checkpoint
    assert isinstance(optimizer, torch.optim.Adam) and epochs == 80
    assert optimizer.param_groups[0]["weight_decay"] == 0.0 and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert {lr_at(rec["schedule"], e, 1e-4, 80) for e in (0, 0.5, 4, 57, 79.9)} == {1e-4}  # constant
    assert pruner.prune_steps == [e * STEPS_PER_EPOCH for e in range(1, 58, 4)]
    for epoch in range(1, 58, 4):
        assert pruner.sparsity_at(epoch * STEPS_PER_EPOCH) == pytest.approx(_cubic(epoch, 0.9, 1, 57), abs=1e-12)
    assert pruner.sparsity_at(57 * STEPS_PER_EPOCH) == 0.9


@pytest.mark.parametrize("recipe", STUDY_RECIPES)
def test_acdc_prunes_at_10_alternates_5_epoch_phases_is_dense_75_to_85_and_fine_tunes_from_85(recipe):
    _, pruner, _, epochs = _built(recipe, "acdc", 0.95)
    assert isinstance(pruner, ACDCPruner) and epochs == 100
    assert pruner.prune_epochs == {10, 20, 30, 40, 50, 60, 70, 85}
    assert pruner.restore_epochs == {15, 25, 35, 45, 55, 65, 75}
    assert pruner.reset_momentum is False


def test_the_dense_entries_keep_the_released_weight_decay_quirk():
    resnet18, _ = method_recipe("dense", "celeba_resnet18")
    mobilenet, _ = method_recipe("dense", "celeba_mobilenet")
    assert resnet18["optimizer"]["weight_decay"] == 0.0  # celeba_resnet18_dense_ep100.yaml sets none
    assert mobilenet["optimizer"]["weight_decay"] == 2**-15
    assert (resnet18["epochs"], resnet18["arch"], mobilenet["arch"]) == (100, "resnet18", "mobilenet")
    assert resnet18["dataset"] == mobilenet["dataset"] == "celeba"


def test_the_studys_preprocessing():
    train, evaluation = attribute_transforms(224)
    assert (train.resize_size, train.image_size, train.crop, train.augment) == (256, 224, "resize_random", True)
    assert (evaluation.resize_size, evaluation.image_size, evaluation.augment) == (256, 224, False)
    assert train.mean == train.std == evaluation.mean == evaluation.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("optimizer", "message"), [
    ({"kind": "adam", "lr": 1e-4, "momentum": 0.9}, "the adam optimizer has no momentum"),
    ({"kind": "lamb", "lr": 1e-4}, "bad value 'lamb' for optimizer kind"),
])
def test_an_optimizer_setting_of_another_kind_is_one_line(tmp_path, optimizer, message):
    recipe = load_recipe("celeba_cpu")
    recipe["methods"]["gmp_pt"]["optimizer"] = optimizer
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(TransferbenchError, match=message) as err:
        method_recipe("gmp_pt", path, sparsity=0.9)
    assert "\n" not in str(err.value) and "recipe celeba_cpu, method gmp_pt" in str(err.value)


def test_an_adam_entry_replaces_the_recipes_sgd_settings_instead_of_merging_them():
    rec, _ = method_recipe("gmp_pt", "celeba_cpu", sparsity=0.9)
    assert rec["optimizer"] == {"kind": "adam", "lr": 1e-3, "weight_decay": 0.0}  # no SGD momentum inherited


# ------------------------------------------------------------------------------------------------ loss, choice


def test_multilabel_targets_train_with_bce_with_logits_and_class_indices_with_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=generator)
    targets = torch.randint(0, 2, (6, 8), generator=generator).float()
    assert torch.allclose(upstream_loss(logits, targets), torch.nn.BCEWithLogitsLoss()(logits, targets))
    labels = torch.randint(0, 8, (6,), generator=generator)
    assert torch.allclose(upstream_loss(logits, labels, 0.1),
                          torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels))


def test_the_kept_epoch_is_the_best_validation_at_the_highest_sparsity_reached():
    model = torch.nn.Linear(2, 1)
    best = BestCheckpoint()
    offers = [(0, 0.0, 0.90), (1, 0.5, 0.60), (2, 0.5, 0.70), (3, 0.5, 0.65), (4, 0.0, 0.99), (5, 0.5, 0.70),
              (6, 0.5, 0.69)]
    kept = []
    for epoch, sparsity, score in offers:
        with torch.no_grad():
            model.weight.fill_(epoch)
        kept.append(best.offer(epoch, sparsity, score, model, {"weight": torch.ones(1, 2, dtype=torch.bool)}))
    # sparser always replaces; at one level only a strictly better score; a dense (AC/DC) epoch never after that
    assert kept == [True, True, True, False, False, False, False]
    assert (best.epoch, best.sparsity, best.score) == (2, 0.5, 0.70)
    restored = BestCheckpoint()
    restored.load_state_dict(best.state_dict())  # the resume state carries the choice
    masks = restored.restore(model)
    assert torch.all(model.weight == 2) and set(masks) == {"weight"}
    assert restored.metadata()["epochs"] == [list(row) for row in offers]


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def faces_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    recipe = load_recipe("celeba_cpu")
    recipe.update(name="tinyfaces", train_size=256, batch_size=32)
    path = tmp_path / "tinyfaces.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gmp", "acdc"])
def test_upstream_on_faces_reaches_the_target_and_registers_the_chosen_epoch(faces_recipe, method):
    assert main(["upstream", "--method", method, "--sparsity", "0.8", "--recipe", str(faces_recipe)]) == 0
    spec = find_checkpoint(method, 0.8, "resnet_tiny", trained_for="faces")
    loaded = load_checkpoint(spec.path, expected_sha256=spec.sha256, target_sparsity=0.8, method=method)
    assert loaded.sparsity.overall == pytest.approx(0.8, abs=1e-4)
    assert loaded.num_classes == 8  # one output per faces attribute
    metadata = torch.load(spec.path, map_location="cpu", weights_only=True)["metadata"]
    assert metadata["upstream_dataset"] == "faces" and metadata["upstream_metric"] == "mean attribute accuracy"
    assert metadata["upstream_test_size"] == 1000 and 0.5 < metadata["upstream_top1"] <= 1.0
    history = metadata["selection"]["epochs"]  # (epoch, mask sparsity, validation score) of all 10 epochs
    assert [row[0] for row in history] == list(range(10))
    highest = max(row[1] for row in history)
    expected = max((row for row in history if row[1] == highest), key=lambda row: (row[2], -row[0]))
    assert highest == pytest.approx(0.8, abs=1e-4)
    assert metadata["selection"]["epoch"] == expected[0]
    assert metadata["selection"]["validation_score"] == expected[2]


@pytest.mark.slow
def test_post_training_gmp_starts_from_the_registered_dense_model(faces_recipe):
    assert main(["upstream", "--method", "gmp_pt", "--sparsity", "0.8", "--recipe", str(faces_recipe)]) == 0
    dense = find_checkpoint("dense", 0.0, "resnet_tiny", trained_for="faces")  # trained first (init: dense)
    spec = find_checkpoint("gmp_pt", 0.8, "resnet_tiny", trained_for="faces")
    assert load_checkpoint(spec.path, target_sparsity=0.8, method="gmp_pt").num_classes == 8
    recipe_config = yaml.safe_load(torch.load(spec.path, weights_only=True)["metadata"]["recipe_config"])
    assert recipe_config["optimizer"]["kind"] == "adam" and recipe_config["epochs"] == 8
    assert load_checkpoint(dense.path).sparsity.overall < 0.005


class Killed(BaseException):
    """Stands for a kill -9 right after an epoch's state was written (no handler of the loop catches it)."""


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_kept_epoch(faces_recipe, tmp_path, monkeypatch):
    from transferbench.upstream import train as train_module

    command = ["upstream", "--method", "gmp", "--sparsity", "0.8", "--recipe", str(faces_recipe), "--device", "cpu"]
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "reference"))
    assert main(command) == 0
    reference = find_checkpoint("gmp", 0.8, "resnet_tiny", trained_for="faces").path

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "killed"))
    save_state = train_module.save_state

    def killed_after_epoch_6(*args, **kwargs):
        save_state(*args, **kwargs)
        if kwargs["epoch"] == 6:  # the GMP ramp is under way: the kept epoch so far is in the state
            raise Killed

    monkeypatch.setattr(train_module, "save_state", killed_after_epoch_6)
    with pytest.raises(Killed):
        main(command)
    monkeypatch.setattr(train_module, "save_state", save_state)
    assert main(command) == 0
    resumed = find_checkpoint("gmp", 0.8, "resnet_tiny", trained_for="faces").path

    theirs, ours = (torch.load(path, map_location="cpu", weights_only=True) for path in (reference, resumed))
    assert ours["metadata"]["training"]["resumed_from_epoch"] == 6
    assert ours["metadata"]["selection"] == theirs["metadata"]["selection"]
    assert ours["metadata"]["training"]["epoch_losses"] == theirs["metadata"]["training"]["epoch_losses"]
    ours, theirs = (load_checkpoint(path).model.state_dict() for path in (resumed, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_a_bad_dataset_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    assert main(["upstream", "--method", "gmp", "--recipe", "celeba_cpu", "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown upstream dataset 'cifar10' (--dataset)" in err and "faces" in err
    assert not (tmp_path / "ckpts").exists()


def test_a_pruner_for_class_labels_on_multilabel_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    assert main(["upstream", "--method", "woodfisher", "--recipe", "small_cpu", "--dataset", "faces"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "woodfisher needs class labels" in err
