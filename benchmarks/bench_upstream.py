"""Throughput of the upstream training loop against the same model's plain forward-backward, in one run.

Three measurements per worker count, each in images/s over the second of two passes (the first warms up workers,
allocators and cuDNN):

- ``plain fwd-bwd``: forward, backward and SGD step on one batch kept on the device (no data loading): the
  ceiling any loop can reach with this model, batch and device;
- ``plain loop``: the usual PyTorch loop: ``DataLoader(ImageFolder, shuffle, workers, pinned)`` + the same step;
- ``upstream loop``: transferbench's ``train_loop`` with GMP's pruner hooks at 90% (its pruning steps all in the
  warm-up pass, so the timed pass is the steady state between them: masks applied to weights and gradients every
  step), its seeded sharded sampler, loader workers, pinned memory and persistent workers, reading the same JPEG
  folder through the upstream ImageNet transforms.

The images are a generated ImageFolder of JPEGs (decoded for real). On a GPU (``--device cuda``) give the paper's
shapes: ``--arch resnet50 --image-size 224 --batch 256 --workers 8 16``.

    python benchmarks/bench_upstream.py                     # CPU defaults: resnet50, 64 px, batch 16
    python benchmarks/bench_upstream.py --device cuda --arch resnet50 --image-size 224 --batch 256 --workers 8 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from transferbench.models import create_model
from transferbench.pruning.gmp import GMPPruner
from transferbench.upstream.data import TorchTrainBatches, upstream_datasets
from transferbench.upstream.distributed import World
from transferbench.upstream.options import LoopOptions
from transferbench.upstream.train import Forward, train_loop


def write_jpeg_folder(root: Path, images: int, side: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(images if split == "train" else classes):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)


def model_and_optimizer(arch: str, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=1000).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step(model, opt, x, y, options: LoopOptions, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.precision == "bf16"):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def plain_fwd_bwd(args, device: torch.device, options: LoopOptions) -> float:
    model, opt = model_and_optimizer(args.arch, device, options.channels_last)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    for _ in range(3):
        plain_step(model, opt, x, y, options, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        plain_step(model, opt, x, y, options, device)
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def plain_loop(args, train_set, workers: int, device: torch.device, options: LoopOptions) -> float:
    model, opt = model_and_optimizer(args.arch, device, options.channels_last)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    seconds = 0.0
    for _pass in range(2):
        sync(device)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if options.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            plain_step(model, opt, x, y, options, device)
        sync(device)
        seconds = time.perf_counter() - start  # the second pass's
    return len(loader) * args.batch / seconds


def upstream_loop(args, train_set, workers: int, device: torch.device, options: LoopOptions) -> float:
    model, opt = model_and_optimizer(args.arch, device, options.channels_last)
    loader = TorchTrainBatches(train_set, args.batch, World(), seed=0, workers=workers, device=device)
    total, first = 2 * len(loader), len(loader)
    # every pruning step falls in the warm-up pass: the timed pass is the steady state between pruning steps
    # (hooks that mask weights and gradients every step), as nearly all of a real run's steps are
    pruner = GMPPruner(model, 0.9, total, t0=0, t_end=first - 1, prune_every=max(1, first // 4))
    recipe = {"schedule": {"kind": "cosine", "warmup_epochs": 0}, "label_smoothing": 0.0}
    marks = []

    def end_of_epoch(epoch: int, loss: float) -> None:
        sync(device)
        marks.append(time.perf_counter())

    sync(device)
    marks.append(time.perf_counter())
    train_loop(Forward(model, device, options), opt, pruner, loader, recipe, 2, 0.01, end_of_epoch=end_of_epoch,
               desc="bench")
    return len(loader) * args.batch / (marks[2] - marks[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="steps per pass")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    options = LoopOptions(precision=args.precision, channels_last=args.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        side = max(args.image_size * 5 // 4, 32)  # JPEGs a bit larger than the crop, as ImageNet's
        write_jpeg_folder(Path(tmp), args.steps * args.batch, side)
        rec = {"dataset": "imagenet", "image_size": args.image_size}
        train_set, _ = upstream_datasets(rec, Path(tmp))
        ceiling = plain_fwd_bwd(args, device, options)
        print(f"{args.arch} {args.image_size}px batch {args.batch} on {device} ({args.precision}"
              f"{', channels_last' if args.channels_last else ''}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"plain fwd-bwd (resident batch): {ceiling:8.1f} images/s")
        for workers in args.workers:
            plain = plain_loop(args, train_set, workers, device, options)
            ours = upstream_loop(args, train_set, workers, device, options)
            print(f"workers={workers:2d}  plain loop {plain:8.1f} images/s ({plain / ceiling:.2f} of fwd-bwd)   "
                  f"upstream loop {ours:8.1f} images/s ({ours / ceiling:.2f} of fwd-bwd, "
                  f"{ours / plain:.2f} x plain loop)")


if __name__ == "__main__":
    main()
