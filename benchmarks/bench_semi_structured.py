"""`--engine semi-structured` on a GPU: feature extraction of a 2:4-pruned ViT, dense half precision vs 2:4 sparse.

The model is `vit_base_patch16_224` (random init, the project's timm wrapper), its 48 transformer-block Linear layers
(qkv, proj, fc1, fc2) pruned 2:4 by magnitude (`pruning.masks.nm_mask`, the pattern `transferbench prune --pattern
2:4` writes). Both sides run `forward_features` under `torch.inference_mode()` on the same device-resident batch of
random 224 px images, in the same process, for each precision (bf16 and fp16 by default):

- dense: the model cast to the precision (eval, channels_last), what `--engine torch` would run with the model cast
  instead of autocast;
- semi-structured: `finetune.semi_structured.semi_structured_model`, the copy `--engine semi-structured` extracts
  with (every converted Linear weight a `torch.sparse.to_sparse_semi_structured` tensor).

It prints images/s of each, the ratio, the largest absolute difference of the features (and relative to the largest
dense feature), the converted layers and the kernels (cuSPARSELt or CUTLASS), and peak GPU memory. Image decoding is
left out on purpose: this times the part the engine changes.

    python benchmarks/bench_semi_structured.py                        # a CUDA GPU of compute capability 8.0+
    python benchmarks/bench_semi_structured.py --precision bf16 --batch-size 256 --iters 20
    python benchmarks/bench_semi_structured.py --dry-run              # CPU smoke test: ViT-Tiny, an identity converter

Without such a GPU it prints one line and exits 2. **Not run on a GPU yet**: no GPU was available to the session
that wrote it, so no number from it has been recorded anywhere.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from transferbench.context import check_semi_structured
from transferbench.errors import TransferbenchError
from transferbench.finetune.semi_structured import HALF_DTYPES, kernel_backend, semi_structured_model
from transferbench.models import create_model
from transferbench.pruning.masks import nm_mask
from transferbench.sparsity import set_weights


def pruned_2_4(arch: str) -> torch.nn.Module:
    """``arch`` with random weights, its transformer blocks' Linear weights pruned 2:4 by magnitude."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=1000).eval()
    with torch.no_grad():
        for weight in set_weights(model, "transformer_blocks").values():
            weight.mul_(nm_mask(weight, 2, 4))
    return model


def gpu_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot run the 2:4 kernels (None when it can)."""
    if device.type != "cuda":
        return f"--device {device} is not one"
    if not torch.cuda.is_available():
        return f"no CUDA GPU is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    try:
        check_semi_structured(device)
    except TransferbenchError:
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} is a {torch.cuda.get_device_name(device)} of compute capability {major}.{minor}"
    return None


def peak_memory(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda" else "n/a"


def timed(model: torch.nn.Module, images: torch.Tensor, iters: int, warmup: int) -> tuple[float, torch.Tensor]:
    """Seconds per batch of ``model.forward_features(images)`` (after ``warmup`` batches), and its features."""
    cuda = images.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            features = model.forward_features(images)
        if cuda:
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        for _ in range(iters):
            features = model.forward_features(images)
        if cuda:
            torch.cuda.synchronize(images.device)
    return (time.perf_counter() - start) / iters, features.float()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=None, help="default vit_base_patch16_224 (vit_tiny_patch16_224 with --dry-run)")
    p.add_argument("--precision", choices=[*HALF_DTYPES, "both"], default="both")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (4 with --dry-run)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (32 with --dry-run)")
    p.add_argument("--iters", type=int, default=None, help="timed batches per side (default 20, 1 with --dry-run)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU smoke test of this script: a small ViT and an identity converter (times mean nothing)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    small = args.dry_run
    device = torch.device("cpu" if small else args.device)
    if not small:
        problem = gpu_problem(device)
        if problem:
            print(f"bench_semi_structured: needs an NVIDIA GPU of compute capability 8.0+ (Ampere or newer) for 2:4 "
                  f"sparse kernels; {problem} (--dry-run runs the CPU smoke test)", file=sys.stderr)
            return 2
        torch.cuda.set_device(device)
    arch = args.arch or ("vit_tiny_patch16_224" if small else "vit_base_patch16_224")
    batch, size = args.batch_size or (4 if small else 256), args.image_size or (32 if small else 224)
    iters = args.iters or (1 if small else 20)
    model = pruned_2_4(arch)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    where = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device.type == "cuda"
             else "cpu, DRY RUN: an identity converter, no sparse kernels, times mean nothing")
    print(f"{arch}, 2:4 magnitude-pruned blocks, batch {batch} x {size} px, {iters} timed batches after {args.warmup} "
          f"warm-up; torch {torch.__version__}; {where}", flush=True)
    precisions = list(HALF_DTYPES) if args.precision == "both" else [args.precision]
    for precision in precisions:
        dtype = HALF_DTYPES[precision]
        dense = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=torch.channels_last)
        sparse, report = semi_structured_model(model, precision, device,
                                               converter=(lambda w: w) if small else None)
        x = images.to(dtype).contiguous(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dense_s, dense_features = timed(dense, x, iters, args.warmup)
        dense_mem = peak_memory(device)
        del dense
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sparse_s, sparse_features = timed(sparse, x, iters, args.warmup)
        sparse_mem = peak_memory(device)
        diff = (sparse_features - dense_features).abs().max().item()
        scale = dense_features.abs().max().item()
        print(f"{precision}: dense {batch / dense_s:.1f} images/s (peak {dense_mem}), semi-structured "
              f"{batch / sparse_s:.1f} images/s (peak {sparse_mem}), {dense_s / sparse_s:.2f}x the dense; "
              f"max |features difference| {diff:.3g} ({diff / scale:.2g} of the largest feature); "
              f"{len(report.converted)} of {len(report.converted) + len(report.skipped)} Linear layers 2:4 "
              f"({'identity converter' if small else kernel_backend()})", flush=True)
        del sparse
    return 0


if __name__ == "__main__":
    sys.exit(main())
