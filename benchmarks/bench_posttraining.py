"""Cost of one-shot post-training pruning (Wanda, SparseGPT) against one forward pass over the same calibration data.

A torchvision ResNet-50 (random weights: the cost does not depend on them) and N calibration images at the given
resolution, on the CPU. Each pruner prunes every conv and linear layer but the stem and the head to 50%, calibrating
the layers one at a time in forward order (``sequential``, the default: one forward pass per layer) or all from one
pass over the dense model (``--parallel``). The baseline is one plain forward pass over the same images, in the same
run; the ratio says how many such passes a pruner costs.

    python benchmarks/bench_posttraining.py                     # 64 images at 64 px, sequential
    python benchmarks/bench_posttraining.py --images 128 --size 96 --parallel
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

from transferbench.pruning.oneshot import scope_parameters
from transferbench.pruning.posttraining import prune_one_shot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--parallel", action="store_true", help="all layers' statistics from one dense pass")
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    batches = list(torch.randn(args.images, 3, args.size, args.size).split(args.batch))
    with torch.no_grad():
        model(batches[0])  # warm-up
        start = time.perf_counter()
        for x in batches:
            model(x)
        forward_s = time.perf_counter() - start
    modules = dict(model.named_modules())
    layers = {n[:-len(".weight")]: modules[n[:-len(".weight")]] for n in scope_parameters(model, "uniform")}
    mode = "parallel (one pass)" if args.parallel else "sequential (one pass per layer)"
    print(f"ResNet-50, {args.images} images at {args.size} px, {len(layers)} layers pruned to 50%, {mode}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'forward pass over the calibration images':44s} {forward_s:8.2f} s    1.0x")
    for method in ("wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        names = dict(pruned.named_modules())
        start = time.perf_counter()
        prune_one_shot(pruned, method, batches, sparsity=0.5, layers={n: names[n] for n in layers},
                       sequential=not args.parallel)
        seconds = time.perf_counter() - start
        print(f"{method + ' (calibration and pruning)':44s} {seconds:8.2f} s {seconds / forward_s:6.1f}x")


if __name__ == "__main__":
    main()
