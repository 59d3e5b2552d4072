"""LTH with rewinding (pruning_methods.md §4) and AC/DC (§5), driven by a real SGD loop; checks from §4.4 and §5.4."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from fractions import Fraction

import pytest
import torch
from test_pruning_magnitude_gmp import (
    Hook,
    assert_clean_cut,
    assert_masked,
    distinct_weights,
    tiny_model,
    torch_global_mask,
    train,
    zeros,
)
from torch import nn
from torch.nn.utils import prune

from transferbench.checkpoints import CheckpointSpec, registry
from transferbench.checkpoints.registry import published_checkpoint
from transferbench.digests import sha256_file
from transferbench.errors import TransferbenchError
from transferbench.models import create_model
from transferbench.pruning.acdc import ACDCPruner, acdc_imagenet_schedule, acdc_scaled_schedule
from transferbench.pruning.factory import build
from transferbench.pruning.lth import LTHPruner, kept_after, lth_sparsity, rounds_for_sparsity
from transferbench.upstream import load_recipe, lr_at

# --- LTH ------------------------------------------------------------------------------------------------------


def torch_lth_round(model: nn.Module, names: list[str], previous: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference, independent of the code under test: Chen et al.'s round on a copy — the previous mask as
    ``prune.custom_from_mask``, then ``prune.global_unstructured(L1Unstructured, amount=0.2)``, which PyTorch's
    PruningContainer applies to the weights still unpruned."""
    ref = copy.deepcopy(model)
    modules = [(ref.get_submodule(n.rpartition(".")[0]), "weight") for n in names]
    for (module, _), n in zip(modules, names, strict=True):
        prune.custom_from_mask(module, "weight", previous[n])
    prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=0.2)
    return {n: module.weight_mask.bool() for (module, _), n in zip(modules, names, strict=True)}


def kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def test_round_schedule_matches_the_lth_t_table():
    # §4.2 table of 1 − 0.8^r (in %, one decimal)
    table = {6: 73.8, 7: 79.0, 8: 83.2, 9: 86.6, 10: 89.3, 11: 91.4, 12: 93.1, 13: 94.5, 14: 95.6, 18: 98.2}
    for r, percent in table.items():
        assert round(100 * lth_sparsity(r), 1) == percent
    assert [rounds_for_sparsity(s) for s in (0.8, 0.9, 0.95)] == [7, 10, 13]  # §4.2's presumed mapping
    assert [rounds_for_sparsity(s, at_least=True) for s in (0.8, 0.9, 0.95)] == [8, 11, 14]
    assert rounds_for_sparsity(0.36, at_least=True) == 2 and rounds_for_sparsity(0.0) == 0
    assert rounds_for_sparsity(0.75, rate=0.5) == 2
    assert [kept_after(1000, r) for r in range(4)] == [1000, 800, 640, 512]
    assert kept_after(1003, 2) == 1003 - 201 - 160  # round(200.6) = 201, then round(0.2·802) = round(160.4) = 160


def run_lth(model: nn.Module, pruner: LTHPruner, steps: int, rewind_to: Callable[[], dict[str, torch.Tensor]],
            extra: Hook | None = None) -> None:
    """Train with ``pruner`` and check every round boundary against §4.4; ``rewind_to()`` is the expected state."""
    names = list(pruner.params)
    n_total = sum(p.numel() for p in pruner.params.values())
    seen = {"previous": {n: m.clone() for n, m in pruner.masks.items()}, "rounds": pruner.pruned_rounds}

    def check_round(r: int) -> None:
        masks = pruner.masks
        assert pruner.pruned_rounds == r
        kept_before = kept(seen["previous"])
        assert kept_before - kept(masks) == round(0.2 * kept_before)  # exactly 20% of the remaining, rounded
        for n in names:
            assert not (masks[n] & ~seen["previous"][n]).any(), "masks must be nested"
        expected = rewind_to()
        for key, value in model.state_dict().items():
            if key in masks:
                assert torch.equal(value[masks[key]], expected[key][masks[key]]), key
                assert (value[~masks[key]] == 0).all(), key
            else:  # excluded layers (conv1, fc), biases, BN: rewound, never pruned
                assert torch.equal(value, expected[key]), key
        seen["previous"] = {n: m.clone() for n, m in masks.items()}

    def hook(stage, step, optimizer):
        if extra is not None:
            extra(stage, step, optimizer)
        if stage == "updated" and step in pruner.prune_steps:
            # reference: torch's global L1 pruning of the *trained* weights (old mask applied, as after_step does)
            trained = copy.deepcopy(model)
            for n in names:
                with torch.no_grad():
                    trained.get_parameter(n).mul_(seen["previous"][n])
            kept_before = kept(seen["previous"])
            assert_clean_cut([trained.get_parameter(n) for n in names],
                             n_total - kept_before + round(0.2 * kept_before))
            seen["reference"] = torch_lth_round(trained, names, seen["previous"])
        if stage == "post" and step in pruner.prune_steps:
            check_round(pruner.pruned_rounds)
            assert all(torch.equal(pruner.masks[n], seen["reference"][n]) for n in names)
            assert len(optimizer.state) == 0, "a fresh optimizer per round: no momentum buffers"
        if stage == "post":
            assert_masked(pruner)

    train(model, pruner, steps, hook)


def test_lth_t_prunes_20_percent_per_round_and_rewinds_to_the_pretrained_weights():
    model = tiny_model(7)
    theta_p = copy.deepcopy(model.state_dict())
    pruner = LTHPruner(model, rounds=3, steps_per_round=3)
    assert "conv1.weight" not in pruner.params and "fc.weight" not in pruner.params  # LTH-T: stem and head dense
    assert {"layer1.0.conv1.weight", "layer2.0.downsample.0.weight"} <= set(pruner.params)
    assert pruner.prune_steps == [2, 5, 8] and [s for s in range(9) if pruner.is_round_start(s)] == [0, 3, 6]
    n_total = sum(p.numel() for p in pruner.params.values())
    assert pruner.target_sparsity == 1 - kept_after(n_total, 3) / n_total == pytest.approx(1 - 0.8**3, abs=2e-4)

    run_lth(model, pruner, 9, lambda: theta_p)

    assert pruner.pruned_rounds == 3
    state = model.state_dict()
    for key, value in state.items():  # the ticket is θ_p ⊙ m
        expected = theta_p[key] * pruner.masks[key] if key in pruner.masks else theta_p[key]
        assert torch.equal(value, expected), key
    assert int((state["conv1.weight"] == 0).sum()) == 0 and int((state["fc.weight"] == 0).sum()) == 0


def test_lth_masks_equal_torch_prune_applied_round_after_round():
    """§4.2 / the issue: r rounds of ``global_unstructured(L1Unstructured, amount=0.2)`` on modules that keep their
    mask (Chen et al.'s ``pruning_model``), with new "trained" weights before every round, give our masks exactly;
    conv1 and fc are never touched and each round removes round(0.2·n_remaining)."""
    model = distinct_weights(tiny_model(11), seed=5)
    pruner = LTHPruner(model, rounds=6, steps_per_round=1)
    names = list(pruner.params)
    reference = copy.deepcopy(model)
    modules = [(reference.get_submodule(n.rpartition(".")[0]), "weight") for n in names]
    for r in range(6):
        kept_before = kept(pruner.masks)
        pruner.prune_and_rewind()
        prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=0.2)
        assert kept_before - kept(pruner.masks) == round(0.2 * kept_before)
        for (module, _), n in zip(modules, names, strict=True):
            assert torch.equal(pruner.masks[n], module.weight_mask.bool()), (r, n)
        trained = distinct_weights(copy.deepcopy(model), seed=100 + r)  # a round of "training": new magnitudes
        with torch.no_grad():
            for (module, _), n in zip(modules, names, strict=True):
                module.weight_orig.copy_(trained.get_parameter(n))
                pruner.params[n].copy_(trained.get_parameter(n) * pruner.masks[n])
            reference.eval()(torch.zeros(1, 3, 16, 16))  # prune's forward hook recomputes weight = orig · mask
    assert pruner.pruned_rounds == 6
    numel = sum(p.numel() for p in pruner.params.values())
    assert kept(pruner.masks) == kept_after(numel, 6)
    for key in ("conv1.weight", "fc.weight"):  # dense, and never handed to the pruner
        assert key not in pruner.masks and int((model.state_dict()[key] == 0).sum()) == 0


def test_lth_rewinds_to_an_early_snapshot_and_then_trains_the_ticket_with_a_fixed_mask():
    model = tiny_model(8)
    pruner = LTHPruner(model, rounds=2, steps_per_round=3, rewind_step=1)
    theta_k = {}

    def capture(stage, step, optimizer):  # θ_1: after one update, before step 1 — where the pruner takes it
        if stage == "pre" and step == 1:
            assert pruner.snapshot is None
            theta_k.update(copy.deepcopy(model.state_dict()))

    run_lth(model, pruner, 6, lambda: theta_k, extra=capture)
    assert pruner.pruned_rounds == 2 and theta_k
    assert all(torch.equal(pruner.snapshot[k], v) for k, v in theta_k.items())

    # steps past the last round: IMP's final training of the ticket, mask fixed
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    before = {n: p.detach().clone() for n, p in pruner.params.items()}
    train(model, pruner, 2, lambda stage, step, opt: assert_masked(pruner) if stage == "post" else None)
    assert all(torch.equal(pruner.masks[n], m) for n, m in masks.items())
    assert any(not torch.equal(p, before[n]) for n, p in pruner.params.items())


def test_lth_t_state_zero_prunes_the_untrained_pretrained_weights():
    model = tiny_model(9)
    theta_p = copy.deepcopy(model.state_dict())
    pruner = LTHPruner(model, rounds=2, steps_per_round=2, prune_at_start=True)
    assert pruner.total_steps == 2 and pruner.prune_steps == [1]
    names = list(pruner.params)
    n_total = sum(p.numel() for p in pruner.params.values())
    reference = torch_lth_round(model, names, pruner.masks)  # §4.4: round-0 mask of θ_p at 20%
    assert_clean_cut(list(pruner.params.values()), round(0.2 * n_total))
    pruner.before_step(0, None)
    assert all(torch.equal(pruner.masks[n], reference[n]) for n in names)
    run_lth(model, pruner, 2, lambda: theta_p)
    assert kept(pruner.masks) == kept_after(n_total, 2)


def test_lth_prunable_set_is_configurable_and_an_early_stop_warns():
    model = tiny_model(10)
    everything = LTHPruner(model, rounds=1, steps_per_round=1, prunable="all_conv_fc")
    assert {"conv1.weight", "fc.weight"} <= set(everything.params)
    pruner = LTHPruner(model, rounds=3, steps_per_round=2)
    with pytest.warns(UserWarning, match="after 1 of 3 rounds"):
        train(model, pruner, 3)
    with pytest.raises(ValueError):
        LTHPruner(model, rounds=2, steps_per_round=3, rewind_step=3)
    with pytest.raises(TransferbenchError, match="unknown prunable set 'convs'"):
        LTHPruner(model, rounds=2, steps_per_round=3, prunable="convs")
    one_round = LTHPruner(model, rounds=1, steps_per_round=1, prune_at_start=True)  # state 0 only: no training
    assert one_round.total_steps == 0
    one_round.finalize()
    assert one_round.pruned_rounds == 1 and one_round.sparsity == pytest.approx(0.2, abs=1e-3)


# --- LTH-T recipes (factory) -------------------------------------------------------------------------------------


class _Steps:
    """A stand-in loader: the factory only asks how many steps an epoch has."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _build_lth(model: nn.Module, sparsity: float, knobs: dict, dense_path=None) -> tuple:
    ctx = {"loader": _Steps(3), "dense_model": lambda: dense_path}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    pruner, _, epochs = build("lth", model, optimizer, sparsity, dict(knobs), ctx)
    return pruner, epochs, ctx


def test_the_recipes_follow_chen_et_al():
    imagenet, mini = (load_recipe(r)["methods"]["lth"] for r in ("imagenet_resnet50", "small_cpu"))
    for knobs in (imagenet, mini):
        assert knobs["prunable"] == "conv_except_first" and knobs["rate"] == 0.2
        assert knobs["optimizer"] == {"lr": 1e-4, "momentum": 0.9, "weight_decay": 1e-4}  # README: --lr 1e-4
        assert {lr_at(knobs["schedule"], e, 1e-4, knobs["epochs_per_round"]) for e in (0, 0.3, 1.7, 9.9)} == {1e-4}
    assert imagenet["epochs_per_round"] == 10 and load_recipe("imagenet_resnet50")["batch_size"] == 256
    theta_p = published_checkpoint(imagenet["pretrained"])  # torchvision's pretrained ResNet-50
    assert (theta_p.method, theta_p.sparsity, theta_p.arch, theta_p.sha256) == ("dense", 0.0, "resnet50", "0676ba61")
    assert theta_p.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert "pretrained" not in mini  # the CPU recipe rewinds to its own dense model


@pytest.mark.parametrize(("sparsity", "rounds"), [(0.8, 7), (0.9, 10), (0.95, 13)])
def test_lth_factory_maps_the_sparsity_to_rounds_of_20_percent_from_the_dense_model(tmp_path, sparsity, rounds):
    dense = tiny_model(3)
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    model = tiny_model(4)
    pruner, epochs, ctx = _build_lth(model, sparsity, load_recipe("small_cpu")["methods"]["lth"],
                                     tmp_path / "dense.pth")
    assert (pruner.rounds, pruner.rate, pruner.prune_at_start, epochs) == (rounds, 0.2, True, rounds - 1)
    assert pruner.steps_per_round == 3 and ctx["schedule_epochs"] == 1
    assert "conv1.weight" not in pruner.params and "fc.weight" not in pruner.params
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in model.state_dict().items())  # θ_p loaded
    assert pruner.target_sparsity == pytest.approx(lth_sparsity(rounds), abs=1e-3)
    with pytest.raises(ValueError, match="less than half a round"):
        _build_lth(tiny_model(4), 0.05, {"rewind": 0.5})


def test_lth_t_rewinds_to_the_published_dense_row_and_never_downloads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("θ_p must never be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with torch.device("meta"):  # the error comes before any weight is read
        resnet50 = create_model("resnet50")
    with pytest.raises(TransferbenchError, match=r"resnet50-0676ba61\.pth.*checkpoints fetch resnet50_dense.*https://download\.pytorch"):
        _build_lth(resnet50, 0.9, load_recipe("imagenet_resnet50")["methods"]["lth"])

    # the same path with a published row of our own: θ_p is that file, checked against the row's digest
    dense = tiny_model(5)
    (tmp_path / "ckpts").mkdir()
    torch.save(dense.state_dict(), tmp_path / "ckpts" / "tiny_dense.pth")
    row = CheckpointSpec("tiny_dense", "dense", 0.0, "resnet_tiny", format="plain", filename="tiny_dense.pth",
                         sha256=sha256_file(tmp_path / "ckpts" / "tiny_dense.pth")[:8])
    table = (*registry.list_checkpoints(include_local=False), row)
    monkeypatch.setattr(registry, "_table", lambda: table)
    model = tiny_model(6)
    pruner, epochs, _ = _build_lth(model, 0.8, {"pretrained": "tiny_dense", "epochs_per_round": 10})
    assert (pruner.rounds, epochs) == (7, 60)
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="LTH-T rewinds a resnet_tiny"):
        _build_lth(tiny_model(6), 0.8, {"pretrained": "resnet50_dense"})


# --- AC/DC ----------------------------------------------------------------------------------------------------


def test_imagenet_schedule_reproduces_the_phase_table():
    # §5.1 table, written out: compressed 10–14, 20–24, …, 70–74 and 85–99, dense otherwise
    compressed = {e for start in range(10, 71, 10) for e in range(start, start + 5)} | set(range(85, 100))
    schedule = acdc_imagenet_schedule()
    pruner = ACDCPruner(tiny_model(), 0.9, 10, schedule.prune_epochs, schedule.restore_epochs)
    flags = [pruner.is_compressed(e) for e in range(100)]
    assert flags == [e in compressed for e in range(100)]
    assert flags == [schedule.is_compressed(e) for e in range(100)]
    assert sum(flags) == 50 and flags.index(True) == 10
    assert max(e for e in range(100) if not flags[e]) == 84
    assert schedule.phases()[-2:] == [(75, 84, False), (85, 99, True)]
    assert sum(acdc_imagenet_schedule(200).is_compressed(e) for e in range(200)) == 100


def test_scaled_schedule_reproduces_the_cpu_table_and_keeps_its_ratios():
    # §5.3: dense 0–1, compressed 2, dense 3, compressed 4, dense 5, compressed 6, dense 7, compressed 8–9
    assert [acdc_scaled_schedule(10).is_compressed(e) for e in range(10)] == [
        False, False, True, False, True, False, True, False, True, True]
    twenty = acdc_scaled_schedule(20)
    assert [twenty.is_compressed(e) for e in range(20)] == [
        acdc_scaled_schedule(10).is_compressed(e // 2) for e in range(20)]
    with pytest.raises(ValueError):
        acdc_scaled_schedule(6)


def momentum_buffers(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for s in optimizer.state.values() if s.get("momentum_buffer") is not None]


@pytest.mark.parametrize("reset", [True, False])
def test_acdc_alternates_exact_sparse_phases_with_dense_ones(reset):
    model = tiny_model(11)
    steps_per_epoch, s = 2, 0.8
    schedule = acdc_scaled_schedule(10)
    pruner = ACDCPruner.from_schedule(model, s, steps_per_epoch, schedule, reset_momentum=reset)
    names = list(pruner.params)
    assert "fc.weight" in names and "conv1.weight" in names  # global over every prunable weight, head included
    n_total = sum(p.numel() for p in pruner.params.values())
    n_pruned = math.floor(Fraction(4, 5) * n_total)
    seen = {"dense_phases": 0, "sparse_phases": 0}

    def hook(stage, step, optimizer):
        epoch, first = divmod(step, steps_per_epoch)
        first = first == 0
        if stage == "pre" and first and epoch in schedule.prune_epochs:
            assert_clean_cut(list(pruner.params.values()), n_pruned)
            seen["reference"] = torch_global_mask(model, names, n_pruned)  # top-k of the current dense |W|
            if epoch == max(schedule.prune_epochs):
                seen["dense_model"] = copy.deepcopy(model.state_dict())
        if stage == "pre" and first and epoch in schedule.restore_epochs:
            assert momentum_buffers(optimizer) and any(bool(b.any()) for b in momentum_buffers(optimizer))
        if stage == "ready" and first and epoch in schedule.prune_epochs:
            seen["sparse_phases"] += 1
            assert all(torch.equal(pruner.masks[n], seen["reference"][n]) for n in names)
            if "phase_mask" in seen:  # §5.4: the relative Hamming distance to the previous phase's mask is logged
                changed = sum(int((pruner.masks[n] != seen["phase_mask"][n]).sum()) for n in names)
                seen.setdefault("changes", []).append((epoch, changed / n_total))
            seen["phase_mask"] = {n: m.clone() for n, m in pruner.masks.items()}
        if stage == "ready" and first and epoch in schedule.restore_epochs:
            seen["dense_phases"] += 1
            assert all(bool(m.all()) for m in pruner.masks.values())
            previously_pruned = seen["phase_mask"]
            assert all((pruner.params[n][~previously_pruned[n]] == 0).all() for n in names)  # re-enter at 0
            buffers = momentum_buffers(optimizer)
            assert all(bool((b == 0).all()) for b in buffers) == reset
        if stage == "post" and schedule.is_compressed(epoch):
            assert zeros(pruner.masks) == n_pruned
            assert all(torch.equal(pruner.masks[n], seen["phase_mask"][n]) for n in names)
            assert_masked(pruner)
        if stage == "post" and not schedule.is_compressed(epoch) and epoch >= min(schedule.prune_epochs):
            assert zeros(pruner.masks) == 0
            if step % steps_per_epoch == steps_per_epoch - 1:  # end of the dense phase: revived weights moved
                revived = sum(int((pruner.params[n][~seen["phase_mask"][n]] != 0).sum()) for n in names)
                assert revived > 0

    train(model, pruner, 10 * steps_per_epoch, hook)
    assert seen["sparse_phases"] == 4 and seen["dense_phases"] == 3
    assert zeros(pruner.masks) == n_pruned and pruner.sparsity == pytest.approx(s, abs=1 / n_total)
    assert_masked(pruner)
    assert [e for e, _ in pruner.mask_changes] == [4, 6, 8]
    assert [e for e, _ in seen["changes"]] == [4, 6, 8]
    assert [d for _, d in pruner.mask_changes] == pytest.approx([d for _, d in seen["changes"]])
    # the dense half of the pair: the state at the end of the last decompressed phase
    assert pruner.dense_state is not None
    assert all(torch.equal(pruner.dense_state[k], v) for k, v in seen["dense_model"].items())


def test_acdc_needs_the_optimizer_to_reset_momentum():
    model = tiny_model(12)
    pruner = ACDCPruner(model, 0.5, 1, prune_epochs=[0], restore_epochs=[1])
    pruner.before_step(0)
    with pytest.raises(ValueError, match="optimizer"):
        pruner.before_step(1)
    with pytest.raises(ValueError):
        ACDCPruner(model, 0.5, 1, prune_epochs=[1, 2], restore_epochs=[2])
