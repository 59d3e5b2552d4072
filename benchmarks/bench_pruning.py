"""Cost of the pruning methods on the small CPU recipe, as ratios to a plain SGD step measured in the same run.

resnet_tiny, 32 px, batch 128, SGD momentum 0.9 + weight decay. For the methods whose extra work happens only
at some steps (WoodFisher's pruning steps, RigL's mask updates) it reports the cost of one such step and its
cost amortised over the recipe's schedule.

    python benchmarks/bench_pruning.py
"""

from __future__ import annotations

import statistics
import time

import torch

from transferbench.models import create_model
from transferbench.pruning.base import Pruner, training_step
from transferbench.pruning.cram import CrAM
from transferbench.pruning.gmp import GMPPruner
from transferbench.pruning.rigl import RigLPruner
from transferbench.pruning.woodfisher import WoodFisherPruner
from transferbench.upstream import load_recipe

BATCH, REPS = 128, 30


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("resnet_tiny", num_classes=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 16, (BATCH,))
    return model, opt, x, y


def time_steps(step_fn, reps: int = REPS) -> float:
    step_fn(0)
    times = []
    for i in range(1, reps + 1):
        start = time.perf_counter()
        step_fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hooked_step(model, opt, pruner, x, y):
    return lambda i: training_step(model, opt, pruner, x, y, i)


def main() -> None:
    recipe = load_recipe("small_cpu")
    total = recipe["epochs"] * (recipe["train_size"] // recipe["batch_size"])
    print(f"resnet_tiny, batch {BATCH}, 32 px, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"small_cpu recipe: {total} steps")
    model, opt, x, y = setup()
    sgd = time_steps(hooked_step(model, opt, Pruner(model), x, y))
    rows = [("plain SGD step (+ no-op hooks)", sgd, sgd)]

    model, opt, x, y = setup()
    gmp = GMPPruner(model, 0.9, 10_000, t0=0, t_end=5000, prune_every=5000)  # fixed-mask steps only
    t = time_steps(hooked_step(model, opt, gmp, x, y))
    rows.append(("GMP step between updates (mask grads + re-mask)", t, t))

    wf_knobs = recipe["methods"]["woodfisher"]
    model, opt, x, y = setup()

    def fisher_batches():
        for _ in range(wf_knobs["num_grads"]):
            yield x[: wf_knobs["grad_batch_size"]], y[: wf_knobs["grad_batch_size"]]

    wf = WoodFisherPruner(model, 0.9, 10_000, t0=0, t_end=9000, prune_every=1, fisher_batches=fisher_batches,
                          num_grads=wf_knobs["num_grads"], block_size=wf_knobs["block_size"], damp=wf_knobs["damp"])
    t_prune = time_steps(hooked_step(model, opt, wf, x, y), reps=5)  # every step is a pruning step here
    n_prunes = wf_knobs["updates"] + 1
    rows.append((f"WoodFisher pruning step (N={wf_knobs['num_grads']} grads, c={wf_knobs['block_size']})",
                 t_prune, sgd + (t_prune - sgd) * n_prunes / total))

    rg = recipe["methods"]["rigl"]
    model, opt, x, y = setup()
    rigl = RigLPruner(model, 0.9, 10_000, update_every=1, drop_fraction=rg["drop_fraction"], t_end=9000)
    t_update = time_steps(hooked_step(model, opt, rigl, x, y))
    n_updates = int(rg["t_end"] * total) // rg["update_every"] + 1
    rows.append((f"RigL update step (drop/grow, every {rg['update_every']} steps)", t_update,
                 sgd + (t_update - sgd) * n_updates / total))

    model, opt, x, y = setup()
    cram = CrAM(model, opt, model, rho=0.1, sparsities=(0.5, 0.7, 0.9), plus=True, sparse_grad=True,
                generator=torch.Generator().manual_seed(0))

    t = time_steps(hooked_step(model, cram, Pruner(model), x, y))
    rows.append(("CrAM+-Multi step (two forward/backward passes)", t, t))

    print("\n| step | s/step | ratio to SGD | amortised over the recipe |\n|---|---|---|---|")
    for name, t, amortised in rows:
        print(f"| {name} | {t * 1000:.1f} ms | {t / sgd:.2f}x | {amortised / sgd:.3f}x |")


if __name__ == "__main__":
    main()
