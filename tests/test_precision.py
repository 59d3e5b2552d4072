"""Issue #13: numbers that never change silently with the hardware, and the GPU paths' latent crash and race.

Everything here runs on CPU. Where a test needs a GPU's *capabilities* (no bf16, no Triton, two GPUs) it replaces
the ``torch.cuda`` query functions with test doubles: the checks under test only ask those functions, so the doubles
exercise exactly the decision the code makes on such a machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures_data import write_task
from fixtures_models import write_pruned_checkpoint
from torch.utils.data import TensorDataset

from transferbench import context
from transferbench.cli import main
from transferbench.context import RunContext, apply_precision, configure_determinism, precision_policy
from transferbench.errors import TransferbenchError
from transferbench.finetune.features import extract
from transferbench.models import create_model
from transferbench.runner import features_key, run
from transferbench.runspec import PRECISIONS, CheckpointRef, make_spec, resolve_hparams
from transferbench.store import RunRecord


def _tiny_backbone():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=1000)
    model.reset_head(3)
    return model


@pytest.fixture
def new_module_tensors_on_conversion():
    """``Module.to`` makes new parameters and buffers, as moving a model onto a GPU does (on CPU it would keep them
    when the device does not change, and a device-only bug would go unseen)."""
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    yield
    torch.__future__.set_overwrite_module_params_on_conversion(before)


def test_extraction_leaves_parameters_trainable(new_module_tensors_on_conversion):
    """features.extract used to move the model inside inference_mode: the moved parameters and buffers became
    inference tensors, and a later training step on the same model raised."""
    model = _tiny_backbone()
    data = TensorDataset(torch.randn(6, 3, 32, 32), torch.arange(6) % 3)
    feats, labels = extract(model, data, batch_size=4, device=torch.device("cpu"), num_workers=0, desc="t")
    assert feats.shape[0] == 6 and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert not any(p.is_inference() for p in model.parameters())
    assert not any(b.is_inference() for b in model.buffers())
    model.train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)),
                           torch.tensor([0, 1, 2, 0]))
    loss.backward()  # raised "Inference tensors cannot be saved for backward" before the fix
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


class _FakeRing:
    """FFCV's loader as far as the ring matters: every batch is written into the same reused buffer."""

    def __init__(self, batches: int) -> None:
        self.batches, self.buffer = batches, torch.empty(2, 3, 4, 4)

    def __iter__(self):
        for b in range(self.batches):
            self.buffer.fill_(float(b))  # FFCV overwrites a ring slot once the consumer moved on
            yield self.buffer, torch.full((2, 1), b)


def test_ffcv_batches_never_hand_over_a_ring_buffer():
    """A kept batch (or an asynchronous copy still reading it) must not see the next batch's pixels: before the fix,
    FFCVBatches yielded the ring buffer itself, so all kept batches read as the last one."""
    from transferbench.fastdata.ffcv_loader import FFCVBatches

    batches = object.__new__(FFCVBatches)  # the iteration alone, over a fake ring (no .beton needed)
    batches.loader, batches.device = _Iterable(lambda: iter(_FakeRing(3))), None
    batches.num_samples, batches.batch_size = 6, 2
    kept = list(batches)
    assert [float(images.mean()) for images, _ in kept] == [0.0, 1.0, 2.0]
    assert [labels.tolist() for _, labels in kept] == [[0, 0], [1, 1], [2, 2]]


class _Closable:
    """An iterator with ``close``, as FFCV's epoch iterator (FFCVBatches closes it when an epoch ends)."""

    def __init__(self, it) -> None:
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def close(self) -> None:
        pass


def test_ring_handoff_waits_for_the_copy_before_the_next_fetch(monkeypatch):
    """The CUDA handoff's order, with a test double for the copy's event: FFCV is asked for batch i+1 only after the
    copy out of batch i's buffer finished."""
    from transferbench.fastdata import ffcv_loader

    log: list[str] = []

    class FakeEvent:
        def synchronize(self) -> None:
            log.append("wait")

    class RecordingHandoff(ffcv_loader.RingHandoff):
        def take(self, images):
            log.append("copy")
            self.pending = FakeEvent()
            return images.clone()

    def fetches():
        for b in range(3):
            log.append("fetch")
            yield torch.full((1, 3, 2, 2), float(b)), torch.tensor([b])

    monkeypatch.setattr(ffcv_loader, "RingHandoff", RecordingHandoff)
    batches = object.__new__(ffcv_loader.FFCVBatches)
    batches.loader, batches.device = _Iterable(fetches), None
    batches.num_samples, batches.batch_size = 3, 1
    assert len(list(batches)) == 3
    assert log == ["fetch", "copy", "wait", "fetch", "copy", "wait", "fetch", "copy", "wait"]


class _Iterable:
    def __init__(self, make) -> None:
        self.make = make

    def __iter__(self):
        return _Closable(self.make())


# --- the precision policy and the feature-cache key ------------------------------------------------------------


class _Split:
    """The fields of a tasks.Split the feature key reads."""

    layout, root, labels = "folders", "/data/cifar10", [0, 1, 2, 1]

    def __len__(self) -> int:
        return 4


def _key(device_type: str, precision: str) -> str:
    hp = resolve_hparams("linear", 0.01, {"precision": precision})
    return features_key("ab" * 32, "resnet50", "cifar10", "train", {"image_size": 224}, _Split(), hp, device_type)


def test_feature_cache_key_differs_by_device_type_and_precision_policy():
    keys = {(d, p): _key(d, p) for d in ("cpu", "cuda") for p in ("fp32", "tf32", "bf16")}
    assert len(set(keys.values())) == len(keys)  # CPU, true-fp32 GPU, TF32 and bf16 features never mix
    assert _key("cuda", "fp32") == _key("cuda", "fp32")  # and the key is a function of its inputs


def test_fp32_is_true_fp32_and_tf32_is_an_explicit_choice(restore_backends):
    assert precision_policy("cuda", "fp32") == {"device_type": "cuda", "precision": "fp32", "tf32": False,
                                                "autocast": None}
    assert precision_policy("cuda", "bf16")["tf32"] is False and precision_policy("cpu", "bf16")["autocast"]
    torch.backends.cudnn.allow_tf32 = True  # torch's default for cuDNN
    assert apply_precision("cuda", "fp32")["tf32"] is False
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert apply_precision("cuda", "tf32")["tf32"] is True
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert resolve_hparams("full", 0.01, {"precision": "tf32"}).precision == "tf32"


def test_run_keys_of_fp32_runs_are_unchanged_and_tf32_is_another_run():
    ref = CheckpointRef("magnitude", 0.5, "resnet_tiny", "sha256:" + "0" * 64)
    specs = {p: make_spec("cifar10", "full", 21, ref, {"precision": p}) for p in PRECISIONS}
    assert len({s.run_key for s in specs.values()}) == len(PRECISIONS) == 4
    assert "precision" in specs["fp32"].key_material()["hparams"]  # as before: fp32 keys did not move


def test_deterministic_algorithms_unless_cudnn_benchmark(monkeypatch, restore_backends):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    state = configure_determinism(cudnn_benchmark=False)
    assert state == {"deterministic_algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
                     "cublas_workspace_config": ":4096:8"}
    assert torch.is_deterministic_algorithms_warn_only_enabled()  # an op with no deterministic kernel only warns
    state = configure_determinism(cudnn_benchmark=True)
    assert state["deterministic_algorithms"] is False and state["cudnn_benchmark"] is True


def test_records_written_before_the_policy_read_without_it():
    golden = Path(__file__).parent / "golden" / "records"
    for path in golden.glob("*.json"):
        record = RunRecord.from_json(json.loads(path.read_text()))
        assert record.precision_policy is None and record.deterministic is None
    record = RunRecord.from_json({**json.loads(next(golden.glob("*.json")).read_text()),
                                  "config": {"precision_policy": precision_policy("cuda", "tf32"),
                                             "determinism": {"deterministic_algorithms": False}}})
    assert record.precision_policy["tf32"] is True and record.deterministic is False


@pytest.fixture
def restore_backends():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[0], saved[1]
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


# --- capability checks (test doubles for the GPU's capabilities, see the module docstring) ----------------------


@pytest.fixture
def fake_gpu(monkeypatch, restore_backends):
    """A machine with two visible V100s: no native bfloat16, no TF32. ``set_device`` calls are recorded."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    return current


def _spec(precision: str = "fp32", mode: str = "linear"):
    ref = CheckpointRef("magnitude", 0.5, "resnet_tiny", "sha256:" + "0" * 64, path="/nonexistent/tiny.pth")
    return make_spec("cifar10", mode, 21, ref, {"precision": precision})


def _one_line_refusal(spec, ctx: RunContext) -> str:
    with pytest.raises(TransferbenchError) as err:
        run(spec, ctx)
    assert not ctx.results.exists()  # refused before any work: nothing written, no data or checkpoint read
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bf16_on_a_gpu_without_it_is_refused_before_any_work(fake_gpu, tmp_path):
    message = _one_line_refusal(_spec("bf16"), RunContext(results=tmp_path / "r", device="cuda:1"))
    assert message.startswith("--precision bf16: cuda:1 (Tesla V100") and "--precision fp32" in message
    assert fake_gpu == [torch.device("cuda:1")]  # cuda:N became the current device first


def test_tf32_needs_an_ampere_gpu(fake_gpu, tmp_path):
    assert "no TensorFloat-32" in _one_line_refusal(_spec("tf32", "full"), RunContext(results=tmp_path / "r",
                                                                                    device="cuda"))
    message = _one_line_refusal(_spec("tf32"), RunContext(results=tmp_path / "r", device="cpu"))
    assert message == "--precision tf32 is TensorFloat-32 on CUDA GPUs; on cpu use --precision fp32"


def test_compile_without_triton_on_a_gpu_is_refused(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(context, "triton_available", lambda: False)
    message = _one_line_refusal(_spec(), RunContext(results=tmp_path / "r", device="cuda:0", compile=True))
    assert message.startswith("--compile on cuda:0 needs Triton")
    context.check_capabilities(torch.device("cpu"), {"fp32"}, compile=True)  # Inductor's CPU backend needs no Triton


def test_a_device_index_that_does_not_exist_is_refused(fake_gpu, tmp_path):
    message = _one_line_refusal(_spec(), RunContext(results=tmp_path / "r", device="cuda:2"))
    assert message.startswith("--device cuda:2 requested but 2 CUDA GPU(s) are visible")
    assert fake_gpu == []


def test_the_cli_exits_2_with_the_one_line(fake_gpu, tmp_path, capsys):
    write_pruned_checkpoint(tmp_path / "tiny_50.pth", sparsity=0.5)
    write_task("cifar10", tmp_path / "data", "folders", train_per_class=1, test_per_class=1, image_size=8)
    code = main(["run", "--checkpoint", str(tmp_path / "tiny_50.pth"), "--sparsity", "0.5", "--method", "magnitude",
                 "--task", "cifar10", "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "r"),
                 "--device", "cuda:1", "--precision", "bf16"])
    assert code == 2 and not (tmp_path / "r").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision bf16" in err


def test_fp16_is_offered_to_gpus_without_bf16_and_refused_on_cpu(fake_gpu, tmp_path):
    message = _one_line_refusal(_spec("bf16"), RunContext(results=tmp_path / "r", device="cuda:1"))
    assert "--precision fp16" in message  # the V100's way to a faster run
    message = _one_line_refusal(_spec("fp16", "full"), RunContext(results=tmp_path / "r2", device="cpu"))
    assert message.startswith("--precision fp16") and "fp32 or bf16" in message
    policy = precision_policy("cuda", "fp16")
    assert policy["autocast"] == "float16" and policy["loss_scaling"] == "dynamic" and policy["tf32"] is False
    assert "loss_scaling" not in precision_policy("cuda", "bf16")  # the other policies' keys did not move


def test_fp16_full_fine_tuning_scales_its_loss_and_resumes_with_the_scale(tmp_path, monkeypatch):
    """float16 autocast with GradScaler (run on the CPU here, where the CLI refuses it: the arithmetic is the same
    code): the scale is saved with each epoch's state, and a run resumed from epoch 1 ends where an uninterrupted
    one does."""
    import numpy as np
    from torch.utils.data import TensorDataset

    from transferbench.finetune import full
    from transferbench.models import create_model

    def model_and_data():
        torch.manual_seed(0)
        model = create_model("resnet_tiny", num_classes=3)
        g = torch.Generator().manual_seed(1)
        y = torch.arange(24) % 3
        return model, TensorDataset(torch.randn(24, 3, 16, 16, generator=g) + y.view(-1, 1, 1, 1), y)

    hp = resolve_hparams("full", 0.001, {"epochs": 3, "lr": 0.05, "batch_size": 8, "precision": "fp16"})
    cpu = torch.device("cpu")
    model, data = model_and_data()
    whole = full.finetune_full(model, {}, data, data, 3, hp, 0, tmp_path / "whole", cpu)

    saved = []
    real_save = full.torch_save

    def stop_after_first_epoch(path, state):
        real_save(path, state)
        saved.append(state["scaler"])
        raise KeyboardInterrupt  # killed right after epoch 1's state was written

    monkeypatch.setattr(full, "torch_save", stop_after_first_epoch)
    model, data = model_and_data()
    with pytest.raises(KeyboardInterrupt):
        full.finetune_full(model, {}, data, data, 3, hp, 0, tmp_path / "resumed", cpu)
    assert saved[0]["scale"] > 1 and "growth_interval" in saved[0]  # the live dynamic loss scale was saved
    monkeypatch.setattr(full, "torch_save", real_save)
    model, data = model_and_data()
    resumed = full.finetune_full(model, {}, data, data, 3, hp, 0, tmp_path / "resumed", cpu)
    assert resumed.resumed_from_epoch == 1
    assert np.array_equal(resumed.test_logits, whole.test_logits)
    assert [p["train_loss"] for p in resumed.curve] == [p["train_loss"] for p in whole.curve]
