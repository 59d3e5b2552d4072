"""``--engine semi-structured`` on the CPU: which Linear layers are converted to 2:4 sparse (a checking stand-in takes
the place of ``torch.sparse.to_sparse_semi_structured``, which needs an Ampere+ GPU), the half-precision extraction,
the record, and the one-line refusals. Nothing here runs the 2:4 kernels: benchmarks/bench_semi_structured.py does,
on a GPU (not run yet: no GPU was available)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402  (timm brings safetensors)

from transferbench import context, runner  # noqa: E402
from transferbench.cli import main  # noqa: E402
from transferbench.errors import TransferbenchError  # noqa: E402
from transferbench.finetune import semi_structured as ss  # noqa: E402
from transferbench.finetune.features import extract_with  # noqa: E402
from transferbench.models import create_model  # noqa: E402
from transferbench.pruning.masks import nm_mask  # noqa: E402
from transferbench.runspec import resolve_hparams  # noqa: E402
from transferbench.sparsity import set_weights  # noqa: E402

CPU = torch.device("cpu")


class CheckingConverter:
    """Stands in for ``to_sparse_semi_structured``: asserts what the real one needs (a contiguous 2-D weight in the
    run's half precision, 2:4 along its inputs, rows a multiple of 32 and columns of 64) and returns it unchanged."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.shapes = dtype, []

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        assert weight.dtype == self.dtype and weight.dim() == 2 and weight.is_contiguous()
        assert int((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1).max()) <= 2
        assert weight.shape[0] % 32 == 0 and weight.shape[1] % 64 == 0
        self.shapes.append(tuple(weight.shape))
        return weight


def _prune_2_4(linears: dict[str, nn.Linear]) -> None:
    with torch.no_grad():
        for module in linears.values():
            module.weight.mul_(nm_mask(module.weight, 2, 4))


def _small_vit() -> nn.Module:
    """Two blocks of width 64, MLP 96: qkv [192, 64], proj [64, 64] and fc1 [96, 64] fit the kernels, fc2 [64, 96]
    does not (96 columns); the 10-class head is the head."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                             embed_dim=64, depth=2, num_heads=2, mlp_ratio=1.5).eval()


def _pruned_vit_tiny() -> nn.Module:
    """The project's ViT-Tiny (every block Linear fits the kernels), its 48 block Linear layers pruned 2:4."""
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=10).eval()
    in_set = set_weights(model, "transformer_blocks")
    _prune_2_4({n: m for n, m in model.named_modules() if f"{n}.weight" in in_set})
    return model


def test_the_shape_rule_takes_what_both_of_the_installed_torchs_backends_take():
    for backend in (torch.sparse.SparseSemiStructuredTensorCUTLASS, torch.sparse.SparseSemiStructuredTensorCUSPARSELT):
        for dtype in ss.HALF_DTYPES.values():
            limits = backend._DTYPE_SHAPE_CONSTRAINTS[dtype]
            assert ss.ROW_MULTIPLE % limits.sparse_min_rows == 0 and ss.COL_MULTIPLE % limits.sparse_min_cols == 0
    assert (ss.ROW_MULTIPLE, ss.COL_MULTIPLE) == (32, 64)  # CUTLASS's float16/bfloat16 minimums, the stricter


def test_the_2_4_linear_layers_that_fit_the_kernels_are_converted_and_outputs_equal_the_dense_half_model():
    model = _small_vit()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    _prune_2_4({n: m for n, m in linears.items() if n != "head" and n != "blocks.1.attn.proj"})
    before = copy.deepcopy(model.state_dict())
    convert = CheckingConverter(torch.bfloat16)
    sparse, report = ss.semi_structured_model(model, "bf16", CPU, converter=convert)

    expected = [f"blocks.{b}.{layer}" for b in (0, 1) for layer in ("attn.qkv", "attn.proj", "mlp.fc1")
                if (b, layer) != (1, "attn.proj")]
    assert report.converted == expected and len(convert.shapes) == len(expected)
    assert report.skipped == {"blocks.0.mlp.fc2": ss.SHAPE, "blocks.1.attn.proj": ss.NOT_24,
                              "blocks.1.mlp.fc2": ss.SHAPE, "head": ss.HEAD}
    summary = report.to_dict()
    assert (summary["converted"], summary["linear_layers"], summary["model_dtype"]) == (5, 9, "bfloat16")
    assert summary["skipped"] == {"head": 1, "not 2:4": 1, "shape": 2}
    modules = dict(sparse.named_modules())
    assert all(not modules[n].weight.requires_grad for n in expected)
    assert all(p.dtype == torch.bfloat16 for p in sparse.parameters())

    x = torch.randn(3, 3, 32, 32)
    dense_half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(sparse(x.to(torch.bfloat16)), dense_half(x.to(torch.bfloat16)))
    state = model.state_dict()  # the model itself is untouched: still fp32, same weights
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in before.items())


def test_extraction_runs_the_converted_copy_in_half_precision_and_returns_float32(monkeypatch):
    model = _pruned_vit_tiny()
    convert = CheckingConverter(torch.float16)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", convert)  # extract_with's default converter
    seen = []  # the patch embedding's input, in the copy (hooks are copied with the model): fp16 batches, no autocast
    model.patch_embed.proj.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    images = [(torch.rand(3, 32, 32), i % 3) for i in range(6)]
    features, labels = extract_with("semi-structured", model, images, 4, CPU, 0, "2:4", precision="fp16")
    assert seen == [(torch.float16, False)] * 2
    assert len(convert.shapes) == 48 and features.dtype == torch.float32 and features.shape == (6, 192)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    dense_half = copy.deepcopy(model).to(dtype=torch.float16, memory_format=torch.channels_last)
    batches = [torch.stack([x for x, _ in images[i:i + 4]]) for i in (0, 4)]  # extraction's batches and layout
    with torch.inference_mode():
        reference = torch.cat([dense_half.forward_features(b.contiguous(memory_format=torch.channels_last).half())
                               for b in batches]).float()
    assert torch.equal(features, reference)
    assert next(model.parameters()).dtype == torch.float32  # the extraction worked on a copy


def test_a_model_without_2_4_linear_layers_is_a_one_line_error():
    def never(weight):
        raise AssertionError("nothing to convert")

    vit = _small_vit()  # dense: no Linear layer is 2:4
    with pytest.raises(TransferbenchError) as err:
        ss.semi_structured_model(vit, "bf16", CPU, converter=never)
    message = str(err.value)
    assert "\n" not in message and "(9 Linear layers: 1 head, 8 not 2:4;" in message
    assert "`transferbench prune --pattern 2:4`" in message and "--engine torch" in message
    with pytest.raises(TransferbenchError, match=r"\(1 Linear layers: 1 head;.*convolutions are not accelerated"):
        ss.semi_structured_model(create_model("resnet_tiny", num_classes=10), "bf16", CPU, converter=never)
    with pytest.raises(TransferbenchError, match="runs in fp16 or bf16: pass --precision bf16"):
        ss.semi_structured_model(vit, "fp32", CPU, converter=never)


def test_half_precision_is_required_and_ffcv_allowed(tmp_path, capsys):
    for precision in ("fp32", "tf32"):
        assert main(["run", "--method", "dense", "--task", "digits", "--engine", "semi-structured", "--precision",
                     precision, "--results", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--engine semi-structured runs in fp16 or bf16: pass --precision bf16" in err
    assert main(["run", "--method", "dense", "--task", "digits", "--engine", "semi-structured", "--precision", "bf16",
                 "--mode", "full", "--results", str(tmp_path / "r")]) == 2
    assert "applies to --mode linear and estimate only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    hp = resolve_hparams("linear", 0.01, {"engine": "semi-structured", "precision": "fp16", "loader": "ffcv"})
    assert (hp.engine, hp.loader) == ("semi-structured", "ffcv")


def test_without_an_ampere_gpu_the_run_stops_with_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "vit.safetensors"
    save_file(_pruned_vit_tiny().state_dict(), str(path))
    code = main(["run", "--arch", "vit_tiny_patch16_224", "--checkpoint", str(path), "--method", "magnitude",
                 "--sparsity", "0.5", "--task", "digits", "--engine", "semi-structured", "--precision", "bf16",
                 "--device", "cpu", "--results", str(tmp_path / "r"), "--workers", "0"])
    assert code == 2 and not (tmp_path / "r").exists()  # no record, no feature cache
    assert capsys.readouterr().err == ("error: --engine semi-structured needs an NVIDIA GPU of compute capability "
                                       "8.0+ (Ampere or newer) for 2:4 sparse kernels; on cpu use --engine torch\n")


def test_the_capability_check_reads_the_gpus_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(TransferbenchError, match=r"on cuda:0 \(Tesla T4, compute capability 7\.5\) use --engine torch"):
        context.check_capabilities(torch.device("cuda:0"), {"fp16"}, False, {"semi-structured"})
    context.check_capabilities(torch.device("cuda:0"), {"fp16"}, False, {"torch"})  # other engines: no question
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    context.check_capabilities(torch.device("cuda:0"), {"fp16"}, False, {"semi-structured"})  # an A100 passes
    monkeypatch.setattr(torch.version, "hip", "6.2")
    with pytest.raises(TransferbenchError, match="needs an NVIDIA GPU"):  # ROCm: not these kernels
        context.check_capabilities(torch.device("cuda:0"), {"fp16"}, False, {"semi-structured"})


def test_the_record_names_the_layers_that_ran_semi_structured(tmp_path, monkeypatch):
    """End to end on the CPU with the GPU check passed and the stand-in converter: the record's engine and report."""
    path = tmp_path / "vit.safetensors"
    save_file(_pruned_vit_tiny().state_dict(), str(path))
    asked = []
    monkeypatch.setattr(runner, "check_capabilities", lambda device, precisions, compile, engines=(): asked.append(
        set(engines)))
    convert = CheckingConverter(torch.bfloat16)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", convert)
    out = tmp_path / "r"
    assert main(["run", "--arch", "vit_tiny_patch16_224", "--checkpoint", str(path), "--method", "magnitude",
                 "--sparsity", "0.5", "--task", "digits", "--engine", "semi-structured", "--precision", "bf16",
                 "--device", "cpu", "--results", str(out), "--workers", "0", "--image-size", "32", "--limit", "30",
                 "--epochs", "1"]) == 0
    assert asked == [{"semi-structured"}] and len(convert.shapes) == 2 * 48  # train and test split
    [record] = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    config = record["config"]
    assert config["hparams"]["engine"] == "semi-structured" and config["hparams"]["precision"] == "bf16"
    info = config["semi_structured"]
    assert (info["converted"], info["linear_layers"], info["skipped"], info["model_dtype"]) == (
        48, 49, {"head": 1}, "bfloat16")
    assert "blocks.11.mlp.fc2" in info["converted_layers"] and info["skipped_layers"] == {"head": "head"}


def test_the_gpu_benchmark_says_one_line_without_such_a_gpu_and_its_dry_run_works(capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_semi_structured.py"
    spec = importlib.util.spec_from_file_location("bench_semi_structured", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench_semi_structured: needs an NVIDIA GPU of compute capability")
    assert bench.main(["--dry-run", "--precision", "bf16", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "max |features difference| 0 " in out and "48 of 49 Linear layers 2:4" in out
