"""GPU semantics on a CPU-only machine: the training and pruning code run on fake ``cuda`` tensors.

``FakeTensorMode`` gives tensors a device and a shape but no storage, so nothing needs a GPU, while device
propagation follows CUDA's rules: an op that mixes a ``cuda`` tensor with a non-scalar CPU tensor raises, as it
would on a GPU. What cannot run there is a host read of a value (``bool(t)``, ``.item()``, ``.cpu()``): a fake
tensor has no value, so those raise ``DataDependentOutputException`` (see ``test_host_reads_of_values_raise``).
Nor can autograd's backward: on a CUDA build of torch without a GPU its engine asks the driver for device 0's
context ("hasPrimaryContext expects a valid device index"), so ``fake_autograd`` stands in for it with random
gradients of each parameter's shape, dtype, device and layout; everything after the gradients (masking them, the
optimizer, the mask updates) is the package's code on cuda.
Also here: ``--compile`` builds few graphs (Dynamo's counters, eager backend) and the local executor gives each
job one GPU, round-robin.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode

from transferbench.finetune import full
from transferbench.finetune.linear import _sgd_epoch, _StackedSGD
from transferbench.models import create_model
from transferbench.pruning import masks as M
from transferbench.pruning.acdc import ACDCPruner
from transferbench.pruning.base import Pruner, training_step
from transferbench.pruning.cram import CrAM
from transferbench.pruning.gmp import GMPPruner
from transferbench.pruning.lth import LTHPruner
from transferbench.pruning.magnitude import MagnitudePruner
from transferbench.pruning.rigl import RigLPruner
from transferbench.pruning.woodfisher import WoodFisherPruner
from transferbench.sparsity import FixedMasks, prunable_weights

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def _on_fake_cuda(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


def _tiny_model(num_classes: int = 5) -> torch.nn.Module:
    """resnet_tiny on (fake) cuda, its conv weights channels_last as full fine-tuning places them.

    Built on the device rather than moved there: ``Module.to`` cannot move fake parameters (torch swaps each
    parameter object and refuses while the fake mode holds a weak reference to it: "Couldn't swap
    Conv2d.weight"), which is also why ``finetune_full`` itself does not run under FakeTensorMode.
    """
    torch.manual_seed(0)
    with torch.device(CUDA):
        model = create_model("resnet_tiny", num_classes=num_classes)
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return model


def _batch(n: int = 4, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, classes, (n,), device=CUDA)


@pytest.fixture
def fake_autograd(monkeypatch):
    """``Tensor.backward`` and ``torch.autograd.grad`` replaced by random gradients (see the module docstring);
    the loss must be a fake cuda tensor, so the forward pass did run on the device."""

    def gradient(t: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(t, memory_format=torch.preserve_format)

    def backward(loss, *args, **kwargs):
        assert _on_fake_cuda(loss), loss
        for param in _parameters_of[0]:
            if param.requires_grad:
                param.grad = gradient(param) if param.grad is None else param.grad + gradient(param)

    def grad(outputs, inputs, *args, **kwargs):
        assert _on_fake_cuda(outputs), outputs
        return tuple(gradient(i) for i in inputs)

    _parameters_of: list = [[]]
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    monkeypatch.setattr(torch.autograd, "grad", grad)
    return lambda model: _parameters_of.__setitem__(0, list(model.parameters()))


# --- the harness itself -------------------------------------------------------------------------------------


def test_device_mixing_raises_under_fake_cuda():
    """The check these tests rely on: a CPU mask on a cuda weight fails as on a GPU (here, without one)."""
    with FakeTensorMode():
        model = _tiny_model()
        params = M.prunable_parameters(model)
        cpu_masks = {name: torch.ones(p.shape, dtype=torch.bool) for name, p in params.items()}
        with pytest.raises(RuntimeError, match="device"):
            M.apply(params, cpu_masks)
        M.apply(params, {name: m.to(CUDA) for name, m in cpu_masks.items()})  # the same masks on cuda: fine


def test_host_reads_of_values_raise():
    """Why whole loops (``finetune_full``'s epoch, ``train_sgd_heads``) are not run here: they read losses on the
    host (``bool(isfinite(loss))``, ``loss.item()``, ``.cpu().numpy()``), which a fake tensor cannot answer."""
    with FakeTensorMode():
        loss = torch.ones((), device=CUDA)
        with pytest.raises(DataDependentOutputException):
            bool(torch.isfinite(loss))
        with pytest.raises(DataDependentOutputException):
            loss.item()


# --- full fine-tuning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_finetuning_epoch_with_fixed_masks_stays_on_cuda(precision, fake_autograd, monkeypatch):
    """finetune_full's epoch (finetune/full._train_epoch) on cuda: CPU batches copied in, autocast forward, loss in
    fp32, backward, SGD with momentum and weight decay, masks re-applied by FixedMasks, the loss summed on the
    device. Its one host read (``_check_finite``, every few steps) is stood in for: it must get cuda tensors."""
    # torch.autocast("cuda") turns itself off where no GPU is present; a bf16-capable GPU is stood in for here
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    host_reads = []

    def check_finite(loss_sum, first_bad, epoch, lr):
        host_reads.append(_on_fake_cuda(loss_sum) and _on_fake_cuda(first_bad) and loss_sum.dtype == torch.float64)
        return 0.0

    monkeypatch.setattr(full, "_check_finite", check_finite)
    with FakeTensorMode():
        model = _tiny_model()
        fake_autograd(model)
        head_dtypes = []
        model.fc.register_forward_hook(lambda module, args, out: head_dtypes.append(out.dtype))
        weights = prunable_weights(model, include_head=False)
        # masks arrive from the checkpoint on the CPU; finetune_full moves them to the device, FixedMasks binds them
        masks = {name: (torch.rand(w.shape) > 0.5).to(CUDA) for name, w in weights.items()}
        keeper = FixedMasks(model, masks)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))) for _ in range(3)]  # as a loader gives
        full._train_epoch(model, opt, keeper, batches, CUDA, precision, 0, 0.1)
        assert head_dtypes == [torch.bfloat16 if precision == "bf16" else torch.float32] * 3
        assert host_reads and all(host_reads)
        assert all(_on_fake_cuda(p) and _on_fake_cuda(p.grad) for p in model.parameters())
        assert all(_on_fake_cuda(m) for m in keeper.masks)
        assert all(_on_fake_cuda(s["momentum_buffer"]) for s in opt.state.values())
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert _on_fake_cuda(bn.running_mean) and _on_fake_cuda(bn.num_batches_tracked)


# --- every pruner's hooks -----------------------------------------------------------------------------------


def _fisher_batches():
    return iter([_batch(2) for _ in range(2)])


PRUNERS = {
    "magnitude": lambda model, opt: (MagnitudePruner(model, 0.5, prune_step=0, total_steps=3), opt),
    "gmp": lambda model, opt: (GMPPruner(model, 0.5, 3, t0=0, t_end=1, prune_every=1), opt),
    "woodfisher": lambda model, opt: (WoodFisherPruner(model, 0.5, 3, t0=0, t_end=1, prune_every=1,
                                                       fisher_batches=_fisher_batches, num_grads=2, block_size=8,
                                                       damp=1e-4), opt),
    "rigl": lambda model, opt: (RigLPruner(model, 0.5, 3, update_every=1, t_end=2, seed=0), opt),
    "lth": lambda model, opt: (LTHPruner(model, rounds=2, steps_per_round=1), opt),
    "acdc": lambda model, opt: (ACDCPruner(model, 0.5, steps_per_epoch=1, prune_epochs=[0, 2], restore_epochs=[1],
                                           total_epochs=3), opt),
    "cram": lambda model, opt: (Pruner(model), CrAM(model, opt, model, rho=0.05, sparsities=(0.5,))),
}


# Where a method's mask update counts kept weights on the host (one sync per mask update, not per step), which a
# fake tensor cannot answer. Not a device bug: the steps up to that read ran on cuda, and a device mix before it
# would fail with a RuntimeError instead (strict, raises=DataDependentOutputException).
HOST_COUNTS = {
    "acdc": "acdc.py:126, compress(): int((mask != previous).sum()) logs how many weights changed",
    "gmp": "gmp.py:109, reached_target() in finalize(): int(m.sum()) against n_keep",
    "lth": "lth.py:53, prune_remaining(): int(m.sum()) sizes the next round",
    "rigl": "rigl.py:137, update_masks(): n_active = int(mask.sum()) sizes drop/grow",
    "woodfisher": "woodfisher.py:320, _nothing_to_prune(): int(m.sum()) against n_keep",
}


def _pruner_param(method: str):
    if method not in HOST_COUNTS:
        return method
    reason = f"FakeTensorMode cannot read a value: the mask update counts weights on the host at {HOST_COUNTS[method]}"
    mark = pytest.mark.xfail(strict=True, raises=DataDependentOutputException, reason=reason)
    return pytest.param(method, marks=mark)


@pytest.mark.parametrize("method", [_pruner_param(m) for m in sorted(PRUNERS)])
def test_pruner_hooks_keep_everything_on_cuda(method, fake_autograd):
    """Three steps of pruning.base.training_step with each method's hooks (its mask updates included) on cuda."""
    with FakeTensorMode():
        model = _tiny_model()
        fake_autograd(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        pruner, opt = PRUNERS[method](model, opt)
        for step in range(3):
            x, y = _batch()
            loss = training_step(model, opt, pruner, x, y, step)
            assert _on_fake_cuda(loss)
        pruner.finalize()
        assert all(_on_fake_cuda(m) for m in pruner.masks.values())
        assert all(_on_fake_cuda(p) for p in model.parameters())


# --- the batched linear heads ---------------------------------------------------------------------------------


def test_batched_linear_heads_epoch_stays_on_cuda():
    """finetune/linear.py's device work: every seed's head in one batched epoch, the stacked SGD update."""
    with FakeTensorMode():
        seeds, n, dim, classes = 3, 20, 16, 4
        train_x, train_y = torch.randn(n, dim, device=CUDA), torch.randint(0, classes, (n,), device=CUDA)
        weight, bias = torch.zeros(seeds, classes, dim, device=CUDA), torch.zeros(seeds, classes, device=CUDA)
        sgd = _StackedSGD([weight, bias], momentum=0.9, weight_decay=5e-4)
        order = torch.stack([torch.randperm(n) for _ in range(seeds)]).to(CUDA)  # as train_sgd_heads does
        for _ in range(2):
            losses = _sgd_epoch(weight, bias, sgd, train_x, train_y, order, batch_size=8, lr=0.01)
        assert _on_fake_cuda(losses) and losses.shape == (seeds,)
        assert all(_on_fake_cuda(b) for b in sgd.buffers)
        with pytest.raises(RuntimeError, match="device"):  # the CPU order train_sgd_heads moves to the device
            _sgd_epoch(weight, bias, sgd, train_x, train_y, order.cpu(), batch_size=8, lr=0.01)


# --- --compile builds few graphs ------------------------------------------------------------------------------


@pytest.fixture
def eager_compile(monkeypatch):
    """runner.compile_model with Dynamo's eager backend (graph capture only, no code generation); Dynamo's
    counters start from zero."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def test_compile_builds_at_most_two_graphs_for_training_steps(eager_compile):
    """Three masked training steps of a compiled model: one graph for forward (two if a BN/shape guard
    recompiles), never one per step."""
    from transferbench.runner import compile_model

    torch.manual_seed(0)
    model = compile_model(create_model("resnet_tiny", num_classes=5).to(memory_format=torch.channels_last))
    keeper = FixedMasks(model, {n: torch.rand(w.shape) > 0.5 for n, w in prunable_weights(model, False).items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(3):
        x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), torch.randint(0, 5, (4,)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        keeper.apply()
    graphs = eager_compile["stats"]["unique_graphs"]
    assert 1 <= graphs <= 2, dict(eager_compile["stats"])


def test_compile_builds_at_most_two_graphs_for_extraction(eager_compile):
    """Feature extraction of 3 batches (the last one shorter) with the compiled ``forward_features``."""
    from torch.utils.data import TensorDataset

    from transferbench.finetune.features import extract
    from transferbench.runner import compile_model

    model = compile_model(create_model("resnet_tiny", num_classes=5))
    data = TensorDataset(torch.randn(10, 3, 32, 32), torch.zeros(10, dtype=torch.long))
    feats, labels = extract(model, data, batch_size=4, device=torch.device("cpu"), num_workers=0, desc="x")
    assert feats.shape[0] == 10 and labels.shape == (10,)
    graphs = eager_compile["stats"]["unique_graphs"]
    assert 1 <= graphs <= 2, dict(eager_compile["stats"])  # the short last batch may specialise once more


# --- the local executor: one GPU per job, round-robin ---------------------------------------------------------


def _local_sweep(tmp_path, monkeypatch, gpu_count: int, device: str, n_jobs: int, visible: str | None):
    """Run ``n_jobs`` units through submit._run_local, each job a subprocess that returns its
    CUDA_VISIBLE_DEVICES. ``torch.cuda.device_count`` is patched: a stand-in for a machine with GPUs."""
    import submitit

    from transferbench.context import RunContext
    from transferbench.dispatch import submit
    from transferbench.dispatch.profiles import load_profile

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpu_count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    seen_devices = []

    def job_that_reports_its_gpu(unit, ctx):
        seen_devices.append(ctx.device)
        return functools.partial(os.getenv, "CUDA_VISIBLE_DEVICES", "<unset>")

    monkeypatch.setattr(submit, "SweepJob", job_that_reports_its_gpu)
    units = [SimpleNamespace(name=f"u{i}", mode="linear", keys=(f"k{i}",)) for i in range(n_jobs)]
    ctx = RunContext(results=tmp_path / "results", device=device)
    result = submit._run_local(units, ctx, load_profile("default"), "gpus", parallel=2)
    assert not result.failed, result.failed
    folder = submit.job_folder(ctx.results)
    job_env = [submitit.local.local.LocalJob(folder, e["job_id"]).result() for e in result.jobs]
    return result.jobs, job_env, seen_devices


def test_local_jobs_get_one_gpu_each_round_robin(tmp_path, monkeypatch, caplog):
    # an earlier CLI test in the same process may have stopped transferbench's logger propagating to caplog's root
    monkeypatch.setattr(logging.getLogger("transferbench"), "propagate", True)
    caplog.set_level("INFO", logger="transferbench")
    entries, job_env, devices = _local_sweep(tmp_path, monkeypatch, gpu_count=2, device="auto", n_jobs=3,
                                             visible=None)
    assert job_env == ["0", "1", "0"]  # what each subprocess saw
    assert [e["gpu"] for e in entries] == [0, 1, 0]  # what the ledger says
    assert devices == ["cuda"] * 3  # each job's only GPU is its cuda:0
    assert [f"on GPU {g}" in caplog.text for g in (0, 1)] == [True, True]


def test_local_jobs_take_gpus_from_cuda_visible_devices_and_cuda_n_pins_one(tmp_path, monkeypatch):
    _, job_env, _ = _local_sweep(tmp_path / "a", monkeypatch, 2, "cuda", 3, visible="5,7")
    assert job_env == ["5", "7", "5"]
    _, job_env, _ = _local_sweep(tmp_path / "b", monkeypatch, 2, "cuda:1", 2, visible="5,7")
    assert job_env == ["7", "7"]


def test_local_jobs_on_cpu_see_no_gpu(tmp_path, monkeypatch):
    entries, job_env, devices = _local_sweep(tmp_path, monkeypatch, 2, "cpu", 2, visible=None)
    assert job_env == ["", ""] and devices == ["cpu", "cpu"] and all("gpu" not in e for e in entries)


def test_local_gpus_one_line_errors(monkeypatch):
    from transferbench.dispatch.submit import local_gpus
    from transferbench.errors import TransferbenchError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(TransferbenchError, match="--device cuda:2 requested but 2 CUDA GPU"):
        local_gpus("cuda:2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2e,GPU-11aa")
    with pytest.raises(TransferbenchError, match="by UUID"):
        local_gpus("auto")


# --- benchmarks/gpu_check.py keeps working ----------------------------------------------------------------------


def test_gpu_check_says_one_line_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the check would run for real")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA GPU" in proc.stderr


def test_gpu_check_dry_run_passes_every_check_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    results = [line.split()[:2] for line in lines if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert not [r for r in results if r[0] == "FAIL"], proc.stdout
    from transferbench.fastdata import ffcv_available

    expected = ["extract-fp32", "extract-bf16", "full-masked", "linear-heads", "compile", "resume-after-kill"]
    for check in expected + (["ffcv"] if ffcv_available() else []):
        assert ["PASS", check] in results, proc.stdout
    assert ["SKIP", "sparse-2:4"] in results and ["SKIP", "engine-2:4"] in results  # a GPU of capability >= 8.0


def test_gpu_check_busy_fraction_counts_overlapping_kernels_once(monkeypatch):
    """The GPU-only measurement of gpu_check, on hand-made profiler events: kernels at [0, 10], [5, 15] and [20, 30]
    µs cover 25 of 50 µs; a CPU event does not count."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(device, start, end):
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end))

    events = [event(cuda, 20, 30), event(cuda, 0, 10), event(cpu, 0, 50), event(cuda, 5, 15)]
    assert gpu_check.busy_fraction(events, 50.0) == pytest.approx(0.5)
    assert gpu_check.busy_fraction([event(cuda, 0, 10), event(cuda, 2, 4)], 20.0) == pytest.approx(0.5)
