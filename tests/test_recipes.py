"""The upstream recipes as published (pruning_methods.md §1.2, §2.3, §3.3, §5.2, §6.2): every shipped entry builds
through the factory, RigL's and GMP's schedules against hand-computed values, the batch-scaling rule and its record,
WoodFisher's memory knobs, and the one-line errors of a bad --batch-size."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from transferbench import shipped
from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.models import create_model
from transferbench.pruning import factory
from transferbench.pruning.acdc import ACDCPruner
from transferbench.pruning.base import Pruner
from transferbench.pruning.gmp import GMPPruner
from transferbench.pruning.lth import LTHPruner
from transferbench.pruning.magnitude import MagnitudePruner
from transferbench.pruning.rigl import RigLPruner
from transferbench.pruning.woodfisher import WoodFisherPruner
from transferbench.upstream.candidates import register_candidate
from transferbench.upstream.optimizers import make_optimizer
from transferbench.upstream.recipes import load_recipe, lr_at, method_recipe, scale_recipe

IMAGENET_TRAIN = 1_281_167
# training images of the sets whose recipes give no train_size: ImageNet, CelebA's official train partition, and
# the faces mini-task's train split
TRAIN_IMAGES = {"imagenet": IMAGENET_TRAIN, "celeba": 162_770, "faces": 2000}
PRUNERS = {"dense": Pruner, "magnitude": MagnitudePruner, "gmp": GMPPruner, "woodfisher": WoodFisherPruner,
           "rigl": RigLPruner, "lth": LTHPruner, "acdc": ACDCPruner, "cram": Pruner, "cram_nm": Pruner}


def _steps_per_epoch(rec: dict) -> int:
    train = rec["train_size"] if "train_size" in rec else TRAIN_IMAGES[rec["dataset"]]
    return train // rec["batch_size"]  # the loader drops the last partial batch


def _build(method: str, recipe: str, sparsity: float, **kwargs):
    """(recipe, knobs, pruner, optimizer, epochs) of one recipe entry on a fresh resnet_tiny (training needs data)."""
    rec, knobs = method_recipe(method, recipe, sparsity=sparsity, **kwargs)
    model = create_model("resnet_tiny", num_classes=16)
    knobs = dict(knobs)
    knobs.pop("init", None)  # train.py's: start from the recipe's dense model
    base = make_optimizer(model.parameters(), rec["optimizer"])
    ctx = {"recipe": rec, "loader": range(_steps_per_epoch(rec)), "device": torch.device("cpu"), "seed": 0,
           "train_set": None, "base_lr": rec["optimizer"]["lr"], "dense_model": None,
           "fisher_batches": lambda num_grads, batch_size: (lambda *shard: iter(()))}
    return (rec, knobs, *factory.build(method, model, base, sparsity, knobs, ctx))


def _entries() -> list[tuple[str, str]]:
    return [(name, method) for name in shipped.names("recipe") for method in load_recipe(name)["methods"]]


@pytest.mark.parametrize(("recipe", "method"), _entries())
def test_every_shipped_entry_builds_its_pruner_with_the_factory(recipe, method, monkeypatch):
    monkeypatch.setattr(factory, "_pretrained", lambda model, row, ctx: model)  # LTH-T's θ_p: tested elsewhere
    sparsity = {"dense": 0.0, "cram_nm": 0.5}.get(method, 0.9)
    rec, knobs, pruner, optimizer, epochs = _build(method, recipe, sparsity)
    kind = knobs.get("pruner", method)
    assert type(pruner) is PRUNERS[kind], (recipe, method)
    if kind == "lth":
        assert epochs == 9 * knobs["epochs_per_round"]  # 90%: 10 rounds of 20%, θ_p pruned without training
    else:
        assert epochs == rec["epochs"]
    if kind.startswith("cram"):
        assert optimizer.needs_closure
    if kind not in ("dense", "cram", "cram_nm"):
        assert pruner.total_steps == epochs * _steps_per_epoch(rec) or kind == "lth"
    assert set(rec["methods"]) == {method}  # the run's recipe records the one entry it ran


def test_rigl_erk1x_is_the_published_recipe():
    rec, _, pruner, optimizer, epochs = _build("rigl_erk1x", "imagenet_resnet50", 0.9)
    assert (rec["batch_size"], rec["label_smoothing"], epochs) == (4096, 0.1, 102)  # 32,000 steps of 4096
    assert rec["optimizer"] == {"lr": 1.6, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True}  # 0.1 × 4096/256
    assert all(group["nesterov"] for group in optimizer.param_groups)
    assert (pruner.update_every, pruner.drop_fraction) == (100, 0.3)
    total = 102 * (IMAGENET_TRAIN // 4096)
    assert (pruner.total_steps, pruner.t_end) == (total, math.floor(25_000 / 32_000 * total))
    # linear warm-up from 0 over 5 epochs (continuous in the step), then ×0.1 at epochs 30, 70, 90
    lrs = [lr_at(rec["schedule"], e, 1.6, 102) for e in (0.0, 2.5, 4.99, 5.0, 29.9, 30.0, 69.9, 70.0, 90.0, 101.9)]
    assert lrs == pytest.approx([0.0, 0.8, 1.6 * 4.99 / 5, 1.6, 1.6, 0.16, 0.16, 0.016, 0.0016, 0.0016])


def test_the_rigl_entries_are_named_as_the_registry_rows():
    table = shipped.load("checkpoints", "table")[0]
    rigl_rows = {row["method"] for row in table if row["method"].startswith("rigl")}
    assert rigl_rows == {"rigl_erk1x", "rigl_erk5x"}
    assert rigl_rows <= set(load_recipe("imagenet_resnet50")["methods"])


def test_rigl_erk5x_stretches_steps_schedule_and_mask_updates_but_not_delta_t():
    one, _, p1, _, epochs1 = _build("rigl_erk1x", "imagenet_resnet50", 0.9)
    five, _, p5, _, epochs5 = _build("rigl_erk5x", "imagenet_resnet50", 0.9)
    assert epochs5 == 5 * epochs1 == 510
    assert five["schedule"] == {"kind": "multistep", "warmup_epochs": 25, "milestones": [150, 350, 450], "gamma": 0.1}
    assert p5.update_every == p1.update_every == 100  # --training_steps_multiplier leaves ΔT alone
    assert p5.total_steps == 5 * p1.total_steps and abs(p5.t_end - 5 * p1.t_end) < 5  # T_end 25k -> 125k of 160k
    for epoch in (1.0, 2.5, 10.0, 45.0, 80.0, 95.0):  # the same LR at the same fraction of the run
        assert lr_at(five["schedule"], 5 * epoch, 1.6, epochs5) == pytest.approx(lr_at(one["schedule"], epoch, 1.6,
                                                                                       epochs1))
    assert one["optimizer"] == five["optimizer"] and one["label_smoothing"] == five["label_smoothing"]


@pytest.mark.parametrize(("batch", "delta_t", "lr"), [(1024, 400, 0.4), (2048, 200, 0.8), (512, 800, 0.2),
                                                      (8192, 50, 3.2)])
def test_rigl_delta_t_and_lr_follow_the_batch(batch, delta_t, lr):
    rec, knobs, pruner, _, _ = _build("rigl_erk1x", "imagenet_resnet50", 0.9, batch_size=batch)
    assert pruner.update_every == knobs["update_every"] == delta_t  # ΔT·4096/B: the same images between updates
    assert rec["optimizer"]["lr"] == pytest.approx(lr)  # 1.6·B/4096
    assert rec["batch_size"] == batch and rec["schedule"]["warmup_epochs"] == 5  # warm-up stays 5 epochs
    total = 102 * (IMAGENET_TRAIN // batch)
    assert pruner.t_end == math.floor(0.78125 * total)  # T_end stays a fraction of the run
    assert rec["scaled"] == {"rule": "linear_lr", "from_batch": 4096, "to_batch": batch, "lr_factor": batch / 4096,
                             "lr": {"from": 1.6, "to": pytest.approx(lr)},
                             "step_knobs": {"update_every": {"from": 100, "to": delta_t}}}


@pytest.mark.parametrize(("method", "batch", "lr"), [
    ("acdc", 128, 0.128),          # NVIDIA/STR: 0.256 at 256, linear
    ("dense", 1024, 1.024),
    ("cram", 256, 0.1),            # 0.2 at 512 (= 0.1·512/256), linear
    ("lth", 64, 2.5e-5),           # 1e-4 at 256: our choice, linear
    ("woodfisher", 64, 0.005),     # same lr at batch 180 and 256 in WoodFisher's scripts
    ("gmp", 128, 0.005),           # IST's GMP: as WoodFisher
    ("gmp_str", 512, 0.512),
])
def test_lr_scaling_rule_of_each_method(method, batch, lr):
    rec, _ = method_recipe(method, "imagenet_resnet50", batch_size=batch)
    assert rec["optimizer"]["lr"] == pytest.approx(lr) and rec["batch_size"] == batch
    published = load_recipe("imagenet_resnet50")["methods"][method].get("batch_size", 256)
    rule = "same_lr" if method in ("woodfisher", "gmp") else "linear_lr"
    assert rec["scaled"]["rule"] == rule and rec["scaled"]["from_batch"] == published
    assert rec["scaled"]["lr_factor"] == pytest.approx(1.0 if rule == "same_lr" else batch / published)


def test_the_published_batch_records_no_scaling():
    rec, _ = method_recipe("acdc", "imagenet_resnet50", batch_size=256)
    assert "scaled" not in rec and rec["optimizer"]["lr"] == 0.256
    assert "scaled" not in method_recipe("acdc", "imagenet_resnet50")[0]


def test_the_scaled_block_lands_in_the_checkpoint_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    rec, _ = method_recipe("rigl", "small_cpu", batch_size=64)
    assert rec["scaled"] == {"rule": "linear_lr", "from_batch": 128, "to_batch": 64, "lr_factor": 0.5,
                             "lr": {"from": 0.1, "to": 0.05},
                             "step_knobs": {"update_every": {"from": 20, "to": 40}}}
    test_set = TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    result = register_candidate(tmp_path / "out", rec, "rigl", 0.0, create_model("resnet_tiny", num_classes=16), {},
                                test_set, torch.device("cpu"), 0, 1.0)
    metadata = torch.load(result.path, weights_only=True)["metadata"]
    config = yaml.safe_load(metadata["recipe_config"])
    assert config["scaled"] == rec["scaled"] and config["batch_size"] == 64 and config["optimizer"]["lr"] == 0.05


def test_gmp_is_ists_schedule_ramping_to_epoch_40():
    """§1.2 b: IST's [1, 5, 40] gives 0.05, 0.3031, …, 0.7992 at epochs 1, 6, …, 36 (the reference's table, from
    WoodFisher's logs); the update at epoch 40 then reaches the target."""
    expected = {0.8: [0.05, 0.3031, 0.4916, 0.6252, 0.7133, 0.7653, 0.7908, 0.7992],
                0.9: [0.05, 0.3368, 0.5505, 0.7019, 0.8017, 0.8607, 0.8896, 0.8991]}
    for method in ("gmp", "woodfisher"):
        for sparsity, table in expected.items():
            rec, _, pruner, _, _ = _build(method, "imagenet_resnet50", sparsity)
            spe = _steps_per_epoch(rec)
            assert pruner.prune_steps == [e * spe for e in (1, 6, 11, 16, 21, 26, 31, 36, 40)]
            assert [round(pruner.sparsity_at(e * spe), 4) for e in range(1, 40, 5)] == table
            assert pruner.sparsity_at(40 * spe) == sparsity and pruner.initial_sparsity == 0.05
            assert rec["optimizer"] == {"lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4}
            lrs = [lr_at(rec["schedule"], e, 0.005, 100) for e in (0, 40.9, 41, 47, 89, 99)]
            assert lrs == pytest.approx([0.005, 0.005, 0.003, 0.0018, 0.005 * 0.6**9, 0.005 * 0.6**9])


def test_gmp_str_is_strs_layerwise_per_epoch_ramp():
    rec, _, pruner, _, _ = _build("gmp_str", "imagenet_resnet50", 0.9)
    spe = _steps_per_epoch(rec)
    assert pruner.scope == "layerwise" and rec["label_smoothing"] == 0.1 and rec["optimizer"]["lr"] == 0.256
    assert pruner.prune_steps == [e * spe for e in range(20, 81)]
    for epoch in (20, 50, 79):  # STR main.py: s − s·(1 − (e − 20)/60)^3
        assert pruner.sparsity_at(epoch * spe) == pytest.approx(0.9 - 0.9 * (1 - (epoch - 20) / 60) ** 3)


def test_woodfisher_passes_its_memory_knobs_and_the_80_percent_settings():
    rec, _, pruner, _, _ = _build("woodfisher", "imagenet_resnet50", 0.9)
    assert (pruner.num_grads, pruner.block_size, pruner.damp, pruner.scale) == (400, 2000, 1e-5, 1.0)
    assert pruner.fisher_dtype == pruner.grad_dtype == torch.float32  # docs/paper_scale.md: 40.9 GB on the host
    assert (pruner.offload_grads, pruner.chunk_bytes, pruner.grad_microbatch) == (True, 2**30, None)
    assert rec["batch_size"] == 180 and rec["label_smoothing"] == 0.0
    rec80, _, pruner80, _, _ = _build("woodfisher", "imagenet_resnet50", 0.8)
    assert (rec80["batch_size"], pruner80.scale, pruner80.block_size) == (256, 0.9, 2000)  # the 80% script
    assert rec80["methods"]["woodfisher"]["scale"] == 0.9 and "by_sparsity" not in rec80["methods"]["woodfisher"]
    assert _build("woodfisher", "imagenet_resnet50", 0.98)[2].block_size == 1000
    model = create_model("resnet_tiny", num_classes=16)
    ctx = {"recipe": rec, "loader": range(10), "fisher_batches": lambda n, b: (lambda *shard: iter(()))}
    knobs = {"num_grads": 4, "grad_batch_size": 8, "grad_dtype": "bfloat16", "grad_microbatch": 2,
             "offload_grads": False, "chunk_bytes": 4096}
    narrow = factory.build("woodfisher", model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, knobs, ctx)[0]
    assert (narrow.grad_dtype, narrow.fisher_dtype, narrow.grad_microbatch) == (torch.bfloat16, torch.float64, 2)
    assert (narrow.offload_grads, narrow.chunk_bytes) == (False, 4096)
    with pytest.raises(ValueError, match="grad_dtype: 'float33' is not a torch dtype"):
        factory.build("woodfisher", model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5,
                      {**knobs, "grad_dtype": "float33"}, ctx)


def test_by_sparsity_that_changes_the_run_is_refused_when_the_run_ignored_it():
    rec, knobs = method_recipe("woodfisher", "imagenet_resnet50")  # no sparsity: by_sparsity left to the factory
    model = create_model("resnet_tiny", num_classes=16)
    ctx = {"recipe": rec, "loader": range(10), "fisher_batches": lambda n, b: (lambda *shard: iter(()))}
    with pytest.raises(ValueError, match=r"by_sparsity 0\.8 sets batch_size"):
        factory.build("woodfisher", model, torch.optim.SGD(model.parameters(), lr=0.1), 0.8, knobs, ctx)
    pruner = factory.build("woodfisher", model, torch.optim.SGD(model.parameters(), lr=0.1), 0.98, knobs, ctx)[0]
    assert pruner.block_size == 1000


def test_nesterov_reaches_the_optimizer_step():
    """RigL trains with Nesterov momentum: one step on L(w) = w from w = 1 with a momentum buffer of 1 is
    w − lr·(g + μ·buf) = 1 − 0.1·1.9 (plain momentum: 1 − 0.1·1.9 only from the second step)."""
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    factory._set_optimizer_options(opt, {"nesterov": True})
    w.sum().backward()
    opt.step()
    assert w.item() == pytest.approx(1 - 0.1 * 1.9)
    with pytest.raises(ValueError, match="nesterov"):
        factory._set_optimizer_options(torch.optim.SGD([w], lr=0.1), {"nesterov": True})


def test_cosine_per_epoch_holds_within_an_epoch():
    imagenet = load_recipe("imagenet_resnet50")["schedule"]
    assert lr_at(imagenet, 10.7, 0.256, 100) == lr_at(imagenet, 10, 0.256, 100)
    assert lr_at(imagenet, 10, 0.256, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 95)) * 0.256)
    assert lr_at(imagenet, 2.5, 0.256, 100) == pytest.approx(0.256 * 3 / 5)  # §0.5 warm-up: base·(e+1)/W
    small = load_recipe("small_cpu")["schedule"]  # the CPU recipe moves every step
    assert lr_at(small, 5.5, 0.1, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4.5 / 9)) * 0.1)


@pytest.mark.parametrize(("batch", "message"), [
    (0, "--batch-size 0: give the global batch, a whole number of images per step (1 or more)"),
    (-8, "--batch-size -8: give the global batch"),
    (48, "--batch-size 48: recipe small_cpu, method rigl counts update_every in steps (20 at batch 128), which would "
         "be 53.33 steps at batch 48; pass a batch that divides 2560 (nearest: 40 or 64)"),
])
def test_a_bad_batch_size_is_one_line(batch, message):
    with pytest.raises(TransferbenchError) as err:
        method_recipe("rigl", "small_cpu", batch_size=batch)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_recipe_without_a_scaling_rule_refuses_another_batch(tmp_path):
    recipe = {**load_recipe("small_cpu"), "name": "mine"}
    del recipe["scaling"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(TransferbenchError, match=r"--batch-size 64: recipe mine, method acdc has no scaling rule"):
        method_recipe("acdc", path, batch_size=64)
    rec, _ = method_recipe("acdc", path, batch_size=128)  # its own batch needs no rule
    assert rec["batch_size"] == 128
    with pytest.raises(TransferbenchError, match="give the global batch"):
        scale_recipe(rec, {}, True)


def test_unknown_entries_and_pruners_are_one_line(tmp_path):
    with pytest.raises(TransferbenchError, match=r"recipe imagenet_resnet50 has no method 'snip' \(--method\); "
                                                 r"choose one of: dense, magnitude, gmp, gmp_str"):
        method_recipe("snip", "imagenet_resnet50")
    recipe = {**load_recipe("small_cpu"), "name": "mine"}
    recipe["methods"]["mine"] = {"pruner": "snip"}
    recipe["methods"]["slow"] = {"pruner": "rigl", "schedule": {"kind": "exponential"}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(TransferbenchError, match="recipe mine, method mine: unknown pruner 'snip'"):
        method_recipe("mine", path)
    with pytest.raises(TransferbenchError, match="recipe mine, method slow: unknown schedule kind 'exponential'"):
        method_recipe("slow", path)


def test_an_alias_entry_is_resolved_on_its_own_copy():
    knobs = method_recipe("rigl", "imagenet_resnet50", batch_size=1024)[1]
    assert knobs["update_every"] == 400
    assert method_recipe("rigl_erk1x", "imagenet_resnet50")[1]["update_every"] == 100


@pytest.mark.parametrize("bad", ["0", "48", "-1"])
def test_the_command_line_refuses_a_bad_batch_size_before_writing_anything(bad, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    out = tmp_path / "out"
    code = main(["upstream", "--method", "rigl", "--sparsity", "0.9", "--batch-size", bad, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: --batch-size {bad}: ") and "Traceback" not in "".join(err)
    assert not out.exists() and not (tmp_path / "ckpts").exists()


def test_upstream_at_another_batch_records_the_scaling_in_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    recipe = {**load_recipe("small_cpu"), "name": "tiny", "train_size": 256, "test_size": 64, "batch_size": 64,
              "epochs": 2}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = ["upstream", "--method", "rigl", "--sparsity", "0.8", "--recipe", str(path), "--batch-size", "32"]
    assert main(args) == 0
    (checkpoint,) = (tmp_path / "ckpts" / "upstream").glob("*.pth")
    config = yaml.safe_load(torch.load(checkpoint, weights_only=True)["metadata"]["recipe_config"])
    assert config["scaled"] == {"rule": "linear_lr", "from_batch": 64, "to_batch": 32, "lr_factor": 0.5,
                                "lr": {"from": 0.1, "to": 0.05},
                                "step_knobs": {"update_every": {"from": 20, "to": 40}}}
    assert (config["batch_size"], config["optimizer"]["lr"]) == (32, 0.05)
