"""5-seed linear probe on cached features: transferbench's batched heads vs 5 sequential paper-style SGD runs.

The baseline is the paper's ``finetune_pre_extracted_features.py`` loop (transfer_protocol.md §3), once per seed:
``torch.manual_seed(seed)``, a fresh ``nn.Linear``, ``torch.optim.SGD`` (lr 0.01, momentum 0.9, weight decay
5e-4), a ``DataLoader`` over a ``TensorDataset`` of the train features (batch 64, reshuffled every epoch, no
``drop_last``), LR × 0.1 after epochs 50 and 100, and an evaluation on the test features (top-1 and mean
per-class accuracy) after every epoch. Features live on the host and batches are copied to the device, as
there. transferbench trains the same 5 heads in one batched pass (``finetune.linear.train_sgd_heads``), also
evaluating every epoch.

Both sides draw each epoch's order with RandomSampler's algorithm (one ``randperm`` per epoch) from a generator
seeded with the run's seed, so they visit the same minibatches and their accuracies can be compared seed by
seed (target: equal within ±0.1 point). The features are learnable (ReLU'd class clusters in 2048-D, like
ResNet50's pooled features), so the accuracies mean something.

    python benchmarks/bench_heads.py                 # ~1 min on 2 CPU cores
    python benchmarks/bench_heads.py --device cuda
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from transferbench.finetune.linear import train_sgd_heads
from transferbench.finetune.schedule import lr_at_epoch
from transferbench.metrics import accuracy_metrics
from transferbench.runspec import resolve_hparams

SEEDS = [21, 51, 81, 111, 141]  # the paper's five linear seeds


class EpochPermutations(Sampler[int]):
    """RandomSampler's order (a fresh ``randperm`` per epoch) from the run's own seeded generator."""

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        yield from torch.randperm(self.n, generator=self.generator).tolist()

    def __len__(self) -> int:
        return self.n


def clustered_features(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spread = 0.08 * (classes / 10) ** 0.3  # top-1 about 70% at 10 classes and 55% at 100: neither trivial nor chance
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * spread
    y = torch.randint(0, classes, (n,), generator=g)
    x = (centres[y] + torch.randn(n, dim, generator=g)).relu_()
    return x, y


def paper_style_head(train: TensorDataset, test: TensorDataset, classes: int, seed: int, hp,
                     device: torch.device) -> float:
    """One seed of the paper's linear probe; returns the final test top-1."""
    torch.manual_seed(seed)
    head = nn.Linear(train.tensors[0].shape[1], classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    loader = DataLoader(train, batch_size=hp.batch_size, sampler=EpochPermutations(len(train), seed))
    test_loader = DataLoader(test, batch_size=hp.batch_size)
    top1 = 0.0
    for epoch in range(hp.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(hp, epoch)
        head.train()
        for xb, yb in loader:
            loss = F.cross_entropy(head(xb.to(device)), yb.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            logits = torch.cat([head(xb.to(device)).cpu() for xb, _ in test_loader])
        top1 = accuracy_metrics(logits.numpy(), test.tensors[1].numpy(), classes)["top1"]
    return top1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(device: torch.device, n_train: int, n_test: int, classes: int, epochs: int) -> dict:
    # the paper's batch 64 and LR; 150 epochs decay after 50 and 100, fewer keep the phases' shares (`run --epochs`)
    hp = resolve_hparams("linear", 0.001, {"epochs": epochs})
    train_x, train_y = clustered_features(n_train, 2048, classes, seed=1)
    test_x, test_y = clustered_features(n_test, 2048, classes, seed=2)
    train, test = TensorDataset(train_x, train_y), TensorDataset(test_x, test_y)
    warm_up = resolve_hparams("linear", 0.001, {"epochs": 1})
    train_sgd_heads(train_x, train_y, test_x, test_y, classes, SEEDS, warm_up, device)
    paper_style_head(train, test, classes, SEEDS[0], warm_up, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    heads = train_sgd_heads(train_x, train_y, test_x, test_y, classes, SEEDS, hp, device)
    sync(device)
    batched_s = time.perf_counter() - start
    batched_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None

    start = time.perf_counter()
    baseline_top1 = [paper_style_head(train, test, classes, seed, hp, device) for seed in SEEDS]
    sync(device)
    baseline_s = time.perf_counter() - start
    ours = [h.top1 for h in heads]
    return {"classes": classes, "epochs": hp.epochs, "baseline_s": baseline_s, "batched_s": batched_s,
            "ours": ours, "baseline": baseline_top1,
            "max_diff_points": 100 * float(np.max(np.abs(np.array(ours) - np.array(baseline_top1)))),
            "batched_gpu_mb": batched_gpu_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train", type=int, default=2000, help="train features")
    parser.add_argument("--test", type=int, default=1000, help="test features (evaluated every epoch)")
    parser.add_argument("--epochs", type=int, default=150, help="the paper's 150; fewer keeps the phases' shares")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device={device} ({name}) torch={torch.__version__} train={args.train} test={args.test} "
          f"epochs={args.epochs} seeds={len(SEEDS)}")
    print("\n| classes | 5 sequential paper-style runs (s) | transferbench, 5 heads batched (s) | speed-up | "
          "top-1 paper-style (mean of 5) | top-1 batched (mean of 5) | largest per-seed |Δ| (points) |")
    print("|---|---|---|---|---|---|---|")
    for classes in args.classes:
        r = bench(device, args.train, args.test, classes, args.epochs)
        print(f"| {classes} | {r['baseline_s']:.2f} | {r['batched_s']:.2f} | "
              f"**{r['baseline_s'] / r['batched_s']:.1f}x** (target 20x) | {100 * np.mean(r['baseline']):.2f} | "
              f"{100 * np.mean(r['ours']):.2f} | {r['max_diff_points']:.2f} (target ≤ 0.1) |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB" + (f"; peak GPU memory of the batched pass {r['batched_gpu_mb']:.0f} MiB"
                                          if r["batched_gpu_mb"] is not None else ""))


if __name__ == "__main__":
    main()
