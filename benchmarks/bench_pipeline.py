"""Full fine-tuning end to end, the loaders before and after issue #13, in one run: steps/s, seconds, test decodes.

    python benchmarks/bench_pipeline.py                 # 256 train + 1024 test JPEGs, 3 epochs, resnet_tiny at 64 px
    python benchmarks/bench_pipeline.py --train 512 --test 2048 --epochs 4 --workers 3

Workload: `finetune_full` (masked SGD, evaluation after every epoch, as the protocol's default) over photo-like
500x375 JPEGs in cifar10's folder layout, few training steps against a large test split as on Flowers (32 steps
against 6,149 test images): the shape where re-decoding the test split every epoch costs most.

- before (plain PyTorch): a DataLoader built per epoch for the training batches (workers respawned every epoch) and
  for the test split, which is decoded again at every evaluation; this is the loader code before issue #13.
- after (transferbench): `finetune.loaders.runner_loaders`, the runner's path: persistent training workers, the test
  split decoded once into uint8 pixels and normalised on the device.

Each path runs in a fresh subprocess, one after the other (never time while another torch process runs). Test-image
decodes are counted across worker processes. Both paths must produce the same logits (printed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = {"before": "before (plain PyTorch, per-epoch loaders)", "after": "after (transferbench runner_loaders)"}


def _decode_counter(dataset, counter):
    """``dataset`` whose reads are counted in ``counter`` (shared by worker processes)."""
    from torch.utils.data import Dataset

    class Counted(Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            with counter.get_lock():
                counter.value += 1
            return dataset[index]

    return Counted()


class PerEpochLoaders:
    """The loaders before issue #13, in plain PyTorch: new DataLoaders every epoch, test images decoded each time."""

    def __init__(self, train, test, batch_size, eval_batch_size, workers):
        from transferbench.seeding import SeededSamples

        self.train_set, self.test_set = SeededSamples(train), test
        self.batch_size, self.eval_batch_size, self.workers = batch_size, eval_batch_size, workers

    def train(self, epoch, epoch_seed):
        import torch
        from torch.utils.data import DataLoader

        indexed = _WithSeed(self.train_set, epoch_seed)
        return DataLoader(indexed, batch_size=self.batch_size, shuffle=True, num_workers=self.workers,
                          generator=torch.Generator().manual_seed(epoch_seed))

    def test(self):
        from torch.utils.data import DataLoader

        return _EachTime(lambda: iter(DataLoader(self.test_set, batch_size=self.eval_batch_size,
                                                  num_workers=self.workers)))


class _WithSeed:
    def __init__(self, samples, seed):
        self.samples, self.seed = samples, seed

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index, self.seed]


class _EachTime:
    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def one_path(path: str, data_root: Path, args) -> dict:
    import numpy as np
    import torch

    from transferbench.finetune.full import finetune_full
    from transferbench.finetune.loaders import runner_loaders
    from transferbench.models import create_model
    from transferbench.runspec import resolve_hparams
    from transferbench.tasks import Transformed, get_task, load_split
    from transferbench.transforms import build_transform, protocol_transform

    task = get_task("cifar10")
    train, test = (load_split(task, s, data_root).dataset for s in ("train", "test"))
    decodes = multiprocessing.Value("l", 0)
    test = _decode_counter(test, decodes)
    train_cfg, test_cfg = (protocol_transform(task, "full", train=t, image_size=args.image_size) for t in (True, False))
    hp = resolve_hparams("full", 0.001, {"epochs": args.epochs, "batch_size": 64, "image_size": args.image_size})
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        if path == "before":
            loaders = PerEpochLoaders(Transformed(train, build_transform(train_cfg)),
                                      Transformed(test, build_transform(test_cfg)), 64, 128, args.workers)
        else:
            loaders = runner_loaders(train, test, train_cfg, test_cfg, 64, 128, args.workers, device, Path(work))
        result = finetune_full(model, {}, None, None, 10, hp, 0, Path(work), device, loaders=loaders)
        seconds = time.perf_counter() - start
    steps = args.epochs * -(-args.train // 64)
    return {"seconds": seconds, "steps_per_s": steps / seconds, "test_decodes": decodes.value,
            "logits_digest": float(np.abs(result.test_logits).sum()), "logits": result.test_logits.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: this allocation's cores - 1")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)  # one path, in a subprocess
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers is None:
        from transferbench.context import default_workers

        args.workers = default_workers()
    if args.path:
        print(json.dumps(one_path(args.path, args.data, args)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_loaders import write_images

    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.train, args.test)
        results = {}
        for path in PATHS:
            command = [sys.executable, __file__, "--path", path, "--data", tmp, "--train", str(args.train),
                       "--test", str(args.test), "--epochs", str(args.epochs), "--image-size", str(args.image_size),
                       "--workers", str(args.workers)]
            results[path] = json.loads(subprocess.run(command, check=True, capture_output=True,
                                                      text=True).stdout.splitlines()[-1])
    print(f"full fine-tuning, resnet_tiny {args.image_size} px, {args.train} train / {args.test} test JPEGs "
          f"(500x375), {args.epochs} epochs, evaluation every epoch, {args.workers} loader worker(s)")
    print(f"{'path':<44}{'seconds':>9}{'steps/s':>9}{'test decodes':>14}")
    for path, label in PATHS.items():
        r = results[path]
        print(f"{label:<44}{r['seconds']:>9.1f}{r['steps_per_s']:>9.2f}{r['test_decodes']:>14}")
    ratio = results["after"]["steps_per_s"] / results["before"]["steps_per_s"]
    same = results["after"]["logits"] == results["before"]["logits"]
    print(f"after / before steps/s: {ratio:.2f}x; same logits: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
