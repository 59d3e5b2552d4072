"""Core-pipeline performance, each number as a ratio to plain eager PyTorch measured in the same run.

1. ResNet50 feature extraction, images/s: plain eager (``torch.no_grad``, NCHW, fp32) vs transferbench's
   extraction (``inference_mode`` + channels_last, fp32 = the protocol; and with bf16 autocast).
2. Full fine-tuning step time of a 90%-sparse ResNet50: plain SGD step vs the same step + re-masking
   (target: masking costs ≤ 5%), and the full runner's step (channels_last + re-masking).
3. A 5-seed paper-style linear probe (150 epochs, batch 64) on cached features vs one extraction of the same
   images (target: the 5 heads together cost < 10% of one extraction). The comparison with 5 sequential
   paper-style head trainings is benchmarks/bench_heads.py.

    python benchmarks/bench_core.py            # ~3 min on 2 CPU cores
    python benchmarks/bench_core.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from transferbench.finetune.features import extract
from transferbench.finetune.linear import train_sgd_heads
from transferbench.models import create_model
from transferbench.runspec import resolve_hparams
from transferbench.sparsity import FixedMasks, apply_masks, prunable_weights


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, reps: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    masks = {}
    for name, w in prunable_weights(model, include_head=False).items():
        k = max(1, int(sparsity * w.numel()))
        masks[name] = w.detach().abs() > w.detach().abs().flatten().kthvalue(k).values
    return masks


def bench_extraction(device: torch.device, n: int, batch: int, reps: int) -> dict[str, float]:
    images = torch.randn(n, 3, 224, 224)
    labels = torch.zeros(n, dtype=torch.long)
    baseline = torchvision.models.resnet50().eval().to(device)

    def plain():
        with torch.no_grad():
            for i in range(0, n, batch):
                baseline(images[i:i + batch].to(device))

    ours = create_model("resnet50")
    apply_masks(ours, magnitude_masks(ours, 0.9))  # a 90%-sparse model; dense kernels, as in the paper
    dataset = TensorDataset(images, labels)
    rates = {"plain eager fp32": n / timed(plain, device, reps)}
    for precision in ("fp32", "bf16"):
        seconds = timed(lambda p=precision: extract(ours, dataset, batch, device, 0, "bench", precision=p),
                        device, reps)
        rates[f"transferbench {precision}"] = n / seconds
    return rates


def bench_masked_step(device: torch.device, batch: int, reps: int) -> tuple[dict[str, float], float]:
    """Median s/step of: a plain SGD step (NCHW), the same + re-masking, and the full runner's step
    (channels_last + re-masking); and the re-masking alone."""
    model = create_model("resnet50").to(device)
    masks = {k: v.to(device) for k, v in magnitude_masks(model, 0.9).items()}
    model.reset_head(100)
    model.to(device).train()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def make_step(net: torch.nn.Module, images: torch.Tensor, masked: bool):
        keeper = FixedMasks(net, masks)  # what the full runner uses after every optimizer step
        keeper.apply()
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)

        def step():
            loss = F.cross_entropy(net(images), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if masked:
                keeper.apply()

        return step, keeper

    steps = {
        "plain SGD step (NCHW)": make_step(model, x, masked=False)[0],
        "SGD step + re-masking (NCHW)": make_step(model, x, masked=True)[0],
    }
    steps["transferbench step (channels_last + re-masking)"], keeper = make_step(
        fast, x.contiguous(memory_format=torch.channels_last), masked=True)
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):  # interleaved, so that drift in machine speed hits every variant alike
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    remask = timed(keeper.apply, device, 20)
    return {name: statistics.median(t) for name, t in times.items()}, remask


def bench_heads(device: torch.device, n: int, classes: int) -> float:
    hp = resolve_hparams("linear", 0.001)  # the paper's 150 epochs, batch 64
    x = torch.randn(n, 2048, device=device)
    y = torch.randint(0, classes, (n,), device=device)
    start = time.perf_counter()
    train_sgd_heads(x, y, x[:256], y[:256], classes, [21, 51, 81, 111, 141], hp, device)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64, help="images per extraction measurement")
    parser.add_argument("--features", type=int, default=2000, help="train features for the head benchmark")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")

    rates = bench_extraction(device, args.images, 32, args.reps)
    base = rates["plain eager fp32"]
    print("\n| ResNet50 feature extraction | images/s | ratio vs plain eager |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")

    step_times, remask = bench_masked_step(device, 16 if device.type == "cpu" else 64, 2 * args.reps + 1)
    plain = step_times["plain SGD step (NCHW)"]
    print("\n| full fine-tuning step, 90% sparse ResNet50 | s/step | ratio |\n|---|---|---|")
    for name, seconds in step_times.items():
        print(f"| {name} | {seconds:.3f} | {seconds / plain:.3f}x |")
    print(f"| re-masking alone | {remask:.4f} | {remask / plain:.3f} of a step |")

    extraction_s = args.features / rates["transferbench fp32"]
    print(f"\n| 5-seed linear probe, {args.features} cached features, 150 epochs | s | ratio |\n|---|---|---|")
    print(f"| one fp32 extraction of the same {args.features} images (from the rate above) | {extraction_s:.1f} | "
          "1.000 |")
    for classes in (10, 100):
        batched = bench_heads(device, args.features, classes)
        print(f"| {classes} classes: 5 heads batched (transferbench) | {batched:.1f} | "
              f"{batched / extraction_s:.3f} of one extraction |")


if __name__ == "__main__":
    main()
