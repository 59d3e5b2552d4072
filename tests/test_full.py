"""Mask-preserving full fine-tuning, checked on a tiny model and in-memory data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

import transferbench.finetune.full as full
from transferbench.finetune.features import extract
from transferbench.models import create_model
from transferbench.runspec import resolve_hparams
from transferbench.sparsity import measure_sparsity, prunable_weights


def _model_and_masks(sparsity=0.7, seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet_tiny", num_classes=1000)
    masks = {}
    for name, w in prunable_weights(model, include_head=False).items():
        k = int(sparsity * w.numel())
        threshold = w.detach().abs().flatten().kthvalue(k).values
        masks[name] = w.detach().abs() > threshold
    model.reset_head(5)
    return model, masks


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 5
    x = torch.randn(n, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def test_pruned_weights_stay_zero_and_the_new_head_is_dense(tmp_path):
    model, masks = _model_and_masks()
    bn_before = model.bn1.running_mean.clone()
    hp = resolve_hparams("full", 0.001, {"epochs": 2, "lr": 0.1, "batch_size": 8})
    result = full.finetune_full(model, masks, _data(), _data(20, seed=1), 5, hp, seed=0, work_dir=tmp_path,
                                device=torch.device("cpu"))
    weights = prunable_weights(model, include_head=False)
    for name, mask in masks.items():
        assert torch.all(weights[name][~mask] == 0), name
        assert torch.all(weights[name][mask] != 0), name  # surviving weights were trained, none died
    assert result.sparsity_before == result.sparsity_after
    assert result.sparsity_after["overall"] == pytest.approx(0.7, abs=0.01)
    assert torch.count_nonzero(model.fc.weight) == model.fc.weight.numel()  # dense head
    assert not torch.equal(model.bn1.running_mean, bn_before)  # BN trains (pitfall P6)
    assert len(result.curve) == 2 and result.resumed_from_epoch == 0


def test_without_remasking_momentum_and_weight_decay_revive_pruned_weights(tmp_path, monkeypatch):
    """The control for the test above: the re-masking after each step is what keeps the zeros."""
    model, masks = _model_and_masks()
    original_apply = full.FixedMasks.apply
    calls = []

    def apply_once(self):  # only the initial application, none after the optimizer steps
        if not calls:
            calls.append(True)
            original_apply(self)

    monkeypatch.setattr(full.FixedMasks, "apply", apply_once)
    hp = resolve_hparams("full", 0.001, {"epochs": 1, "lr": 0.1, "batch_size": 8})
    with pytest.raises(RuntimeError, match="mask violated"):  # and the runner's final check notices
        full.finetune_full(model, masks, _data(), _data(20, seed=1), 5, hp, seed=0, work_dir=tmp_path,
                           device=torch.device("cpu"))
    assert measure_sparsity(model, include_head=False).overall < 0.7 - 0.5


# --- host syncs of the training step (issue #13) -----------------------------------------------------------------

HOST_SYNCS = {"item", "__bool__", "cpu", "tolist", "numpy", "__float__", "__int__"}


class _SyncCounter(TorchFunctionMode):
    """Counts the tensor methods that make the host wait for the device (``.item()``, ``bool()``, ``.cpu()``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_SYNCS:
            self.syncs.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _batches(n: int, poison_step: int | None = None):
    g = torch.Generator().manual_seed(3)
    out = []
    for step in range(n):
        x = torch.randn(8, 3, 32, 32, generator=g)
        if step == poison_step:
            x[0, 0, 0, 0] = float("nan")
        out.append((x, torch.arange(8) % 5))
    return out


def _epoch_setup():
    model, masks = _model_and_masks()
    keeper = full.FixedMasks(model, masks)
    keeper.apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, keeper, opt


def test_a_training_epoch_reads_the_device_once():
    """Before: isfinite(loss) and loss.item() every step, 2 syncs a step; now the loss sum is read once an epoch
    (every FINITE_CHECK_EVERY steps on long epochs)."""
    model, keeper, opt = _epoch_setup()
    with _SyncCounter() as counter:
        full._train_epoch(model, opt, keeper, _batches(5), torch.device("cpu"), "fp32", epoch=0, lr=0.05)
    assert counter.syncs == ["item"]


def test_the_epoch_loss_and_weights_equal_the_per_step_reads():
    """The reference is the loop as it was: finite-check and ``loss.item()`` summed in Python after every step."""
    model, keeper, opt = _epoch_setup()
    ref_model, ref_keeper, ref_opt = _epoch_setup()
    ref_model.train()
    loss_sum = 0.0
    for images, targets in _batches(5):
        loss = F.cross_entropy(ref_model(images.contiguous(memory_format=torch.channels_last)).float(), targets)
        assert torch.isfinite(loss)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()
        ref_keeper.apply()
        loss_sum += loss.item()
    mean = full._train_epoch(model, opt, keeper, _batches(5), torch.device("cpu"), "fp32", epoch=0, lr=0.05)
    assert mean == loss_sum / 5  # bit for bit: the float64 device sum is the Python sum
    for (name, p), q in zip(model.state_dict().items(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_diverged_epoch_names_its_first_non_finite_step(monkeypatch):
    model, keeper, opt = _epoch_setup()
    monkeypatch.setattr(full, "FINITE_CHECK_EVERY", 4)  # stopped at the first read after the bad step, not later
    seen = []
    batches = _batches(12, poison_step=2)
    with pytest.raises(full.TransferbenchError, match=r"NaN/inf at epoch 3 step 2 \(lr=0.05\)"):
        full._train_epoch(model, opt, keeper, (seen.append(b) or b for b in batches), torch.device("cpu"), "fp32",
                          epoch=3, lr=0.05)
    assert len(seen) == 4


def test_extraction_and_evaluation_never_wait_for_the_device_per_batch():
    """Before: one blocking ``.cpu()`` per batch; now outputs are copied to the host without a wait (on a GPU into
    pinned memory, waited for once at the end), with the same numbers."""
    model, _ = _model_and_masks()
    data = _data(20)
    with _SyncCounter() as counter:
        feats, labels = extract(model, data, batch_size=8, device=torch.device("cpu"), num_workers=0, desc="t")
    assert counter.syncs == ["item"]  # only the DataLoader's base seed, drawn on the host once per pass
    with torch.inference_mode():
        reference = torch.cat([model.forward_features(x.contiguous(memory_format=torch.channels_last))
                               for x, _ in DataLoader(data, batch_size=8)])
    assert torch.equal(feats, reference) and labels.tolist() == (torch.arange(20) % 5).tolist()
    with _SyncCounter() as counter:
        logits, _ = full.evaluate(model, DataLoader(data, batch_size=8), torch.device("cpu"))
    assert "cpu" not in counter.syncs and len(counter.syncs) <= 3  # the seed, and the results' .numpy() once each
    with torch.inference_mode():
        expected = torch.cat([model(x.contiguous(memory_format=torch.channels_last)) for x, _ in
                              DataLoader(data, batch_size=8)])
    assert np.array_equal(logits, expected.numpy())
