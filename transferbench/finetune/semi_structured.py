"""2:4 semi-structured sparse feature extraction on NVIDIA GPUs (``--engine semi-structured``, issue #16).

A checkpoint whose Linear weights keep at most 2 of every 4 consecutive inputs of each output row (``transferbench
prune --pattern 2:4``: ``pruning.masks.nm_mask``) can run those layers on the sparse tensor cores of Ampere and
newer GPUs. ``semi_structured_model`` makes an inference copy of the model cast to float16 or bfloat16 in which
every such Linear weight is replaced by ``torch.sparse.to_sparse_semi_structured(weight)``; ``F.linear`` then
dispatches to the 2:4 kernels (torch's ``semi_sparse_linear`` flattens a [B, N, C] input to [B·N, C] and pads the
dense operand to the kernels' multiples itself). Everything else (convolutions, norms, attention, the dense Linear
layers) stays dense, in the same half precision: the engine accelerates transformer blocks, not CNNs.

Only the weight's shape is constrained. torch 2.14's ``torch/sparse/semi_structured.py`` gives, per dtype,
``_DTYPE_SHAPE_CONSTRAINTS = (sparse_min_rows, sparse_min_cols, dense_min_rows, dense_min_cols)``:
float16 and bfloat16 are (32, 64, 8, 8) for ``SparseSemiStructuredTensorCUTLASS`` and (16, 16, 8, 8) for
``SparseSemiStructuredTensorCUSPARSELT``, and ``_validate_device_dim_dtype_shape`` refuses a weight whose rows
(out_features) or columns (in_features) are not a positive multiple of the sparse minimums. This module asks for
the stricter pair (rows a multiple of 32, columns of 64), so a layer it converts is taken by either backend
(tests/test_semi_structured.py checks these numbers against the installed torch). The backend is torch's default,
cuSPARSELt, where the build has it, CUTLASS otherwise (``SparseSemiStructuredTensor._FORCE_CUTLASS``).

Not measured on a GPU yet (no GPU was available to the session that wrote it): ``benchmarks/bench_semi_structured.py``
times it against the dense half-precision model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import TransferbenchError

log = logging.getLogger("transferbench")

ENGINE = "semi-structured"
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the stricter of CUTLASS's (32, 64) and cuSPARSELt's (16, 16) sparse minimums for float16/bfloat16 (module docstring)
ROW_MULTIPLE, COL_MULTIPLE = 32, 64

NOT_24 = "not 2:4"
SHAPE = "shape"
HEAD = "head"

Converter = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SemiStructuredReport:
    """Which Linear layers run 2:4 sparse, and why the others stay dense (``NOT_24``: a group of 4 inputs keeps more
    than 2 weights; ``SHAPE``: out x in is not a multiple of 32 x 64; ``HEAD``: the classifier, which feature
    extraction does not run)."""

    dtype: torch.dtype
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What the run's record keeps (``config.semi_structured``)."""
        return {"model_dtype": str(self.dtype).removeprefix("torch."), "kernels": kernel_backend(),
                "linear_layers": len(self.converted) + len(self.skipped), "converted": len(self.converted),
                "skipped": dict(sorted(Counter(self.skipped.values()).items())),
                "converted_layers": list(self.converted), "skipped_layers": dict(self.skipped)}


def half_dtype(precision: str) -> torch.dtype:
    if precision not in HALF_DTYPES:
        raise TransferbenchError(f"--engine {ENGINE} runs in fp16 or bf16: pass --precision bf16 (not {precision})")
    return HALF_DTYPES[precision]


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether ``weight`` [out, in] keeps at most 2 nonzeros in every group of 4 consecutive inputs of each row."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    kept = (weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(dim=-1)
    return bool((kept <= 2).all())


def fits_kernels(weight: torch.Tensor) -> bool:
    rows, cols = weight.shape
    return rows > 0 and cols > 0 and rows % ROW_MULTIPLE == 0 and cols % COL_MULTIPLE == 0


def _head(model: nn.Module) -> nn.Module | None:
    for getter in ("head_module", "get_classifier"):  # a TransferModel's, a plain timm model's
        if callable(getattr(model, getter, None)):
            head = getattr(model, getter)()
            return head if isinstance(head, nn.Module) else None
    return None


def plan_semi_structured(model: nn.Module, precision: str) -> SemiStructuredReport:
    """Which of ``model``'s Linear layers ``semi_structured_model`` converts (their weights judged in the half
    precision they will run in), without converting anything."""
    dtype = half_dtype(precision)
    report = SemiStructuredReport(dtype)
    head = _head(model)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if module is head:
            report.skipped[name] = HEAD
        elif not is_2_4(module.weight.detach().to(dtype)):
            report.skipped[name] = NOT_24
        elif not fits_kernels(module.weight):
            report.skipped[name] = SHAPE
        else:
            report.converted.append(name)
    return report


def no_layers_message(report: SemiStructuredReport) -> str:
    summary = report.to_dict()
    reasons = ", ".join(f"{n} {why}" for why, n in summary["skipped"].items())
    found = f"{summary['linear_layers']} Linear layers: {reasons}" if reasons else "no Linear layers"
    return (f"--engine {ENGINE} found no Linear layer with a 2:4 weight of a shape its kernels take ({found}; rows "
            f"a multiple of {ROW_MULTIPLE}, columns of {COL_MULTIPLE}; convolutions are not accelerated): prune the "
            "checkpoint with `transferbench prune --pattern 2:4`, or use --engine torch")


def kernel_backend() -> str:
    """The 2:4 kernels the default converter uses: torch's default, cuSPARSELt, where this build has it."""
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return "cusparselt" if cusparselt is not None and cusparselt.is_available() else "cutlass"


@contextlib.contextmanager
def _torch_backend() -> Iterator[None]:
    """torch's converter on the backend ``kernel_backend`` names (its flag restored afterwards)."""
    from torch.sparse import SparseSemiStructuredTensor

    saved = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = kernel_backend() == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = saved


def semi_structured_model(model: nn.Module, precision: str, device: torch.device,
                          converter: Converter | None = None) -> tuple[nn.Module, SemiStructuredReport]:
    """An inference copy of ``model`` on ``device`` in ``precision`` (fp16 or bf16; eval mode, channels_last) whose
    2:4 Linear weights of a shape the kernels take are ``converter(weight)`` (default
    ``torch.sparse.to_sparse_semi_structured``, looked up at call time), and the report of what was converted.
    ``model`` itself is left as it was. No layer to convert is a one-line TransferbenchError naming the fix."""
    report = plan_semi_structured(model, precision)
    if not report.converted:
        raise TransferbenchError(no_layers_message(report))
    sparse = copy.deepcopy(model).eval()
    sparse.to(device=device, dtype=report.dtype, memory_format=torch.channels_last)
    modules = dict(sparse.named_modules())
    with _torch_backend() if converter is None else contextlib.nullcontext():
        convert = converter if converter is not None else torch.sparse.to_sparse_semi_structured
        for name in report.converted:
            linear = modules[name]
            linear.weight = nn.Parameter(convert(linear.weight.detach().contiguous()), requires_grad=False)
    log.info("--engine %s: %d of %d Linear layers run 2:4 sparse in %s (%s)", ENGINE, len(report.converted),
             len(report.converted) + len(report.skipped), precision, kernel_backend() if converter is None else
             "a given converter")
    return sparse, report
