"""The full fine-tuning train pipeline: FFCV against the torchvision DataLoader, in one run (images/s, peak memory).

    python benchmarks/bench_loaders.py                         # 1024 JPEGs of 500x375, 2 workers, batch 64
    python benchmarks/bench_loaders.py --images 2048 --workers 8 --ffcv-python /path/to/venv/bin/python

Workload: decode + RandomResizedCrop 224 + horizontal flip + normalize, batch 64, shuffled, as `run --mode full`
feeds the model (no model: this measures the loader alone, the part that bounds full fine-tuning on most
clusters). Images are photo-like JPEGs (smooth colour fields with texture and noise, quality 90) in the
pre-split folder layout of a real task (cifar10's card, so the protocol's transforms are the task's).

- baseline: plain `torchvision.datasets.ImageFolder` + `transforms.Compose` + `DataLoader(num_workers=W)`
- transferbench torchvision: the runner's default path (`Transformed` split + per-sample seeded augmentation)
- transferbench ffcv (jpg q90): `--loader ffcv` over the `.beton` of `transferbench data convert` (max side 512,
  JPEG quality 90: the default)
- transferbench ffcv (raw): the same from `data convert --write-mode raw` (decoded pixels: no JPEG decoding)

Conversion time and the size of the train `.beton` are reported separately (once per task).

Each path runs in a fresh subprocess (its own peak RSS, children included) for ``--epochs`` epochs; the first
epoch is a warm-up (FFCV's numba compilation, page cache) and is not timed. Worker start-up is part of every
timed epoch for the DataLoader paths, as in the runner (non-persistent workers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATHS = ("baseline", "torchvision", "ffcv", "ffcv-raw")
LABELS = ("baseline (ImageFolder)", "transferbench torchvision", "transferbench ffcv (jpg q90)",
          "transferbench ffcv (raw)")
BATCH = 64


def write_images(data_root: Path, n: int, n_test: int = 10) -> None:
    """``n`` photo-like 500x375 JPEGs in cifar10's pre-split folder layout (and ``n_test`` in test/)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    y, x = np.mgrid[0:375, 0:500] / 500.0
    for split, count in (("train", n), ("test", n_test)):
        for i in range(count):
            folder = data_root / "cifar10" / split / classes[i % len(classes)]
            folder.mkdir(parents=True, exist_ok=True)
            freq, phase = rng.uniform(1, 6, size=3), rng.uniform(0, 2 * np.pi, size=3)
            field = [120 + 90 * np.sin(2 * np.pi * freq[c] * (x + 0.6 * y) + phase[c]) for c in range(3)]
            pixels = np.stack(field, -1) + rng.normal(0, 12, size=(375, 500, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def _epochs(make_epoch, epochs: int) -> tuple[int, float]:
    """Iterate ``epochs`` epochs; returns (images, seconds) over all but the first."""
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        count = 0
        for batch, _ in make_epoch(epoch):
            count += batch.shape[0]
        if epoch > 0:
            images, seconds = images + count, seconds + time.perf_counter() - t0
    return images, seconds


def run_path(path: str, data_root: Path, workers: int, epochs: int) -> dict:
    import torch

    torch.set_num_threads(1)  # the main process only collates; the workers (or FFCV's threads) do the work
    if path == "baseline":
        import torchvision.transforms as T
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder

        transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])])
        dataset = ImageFolder(str(data_root / "cifar10" / "train"), transform=transform)
        images, seconds = _epochs(lambda e: DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                                       num_workers=workers), epochs)
        return {"images_per_s": images / seconds}

    from transferbench.finetune.loaders import TorchLoaders
    from transferbench.tasks import Transformed, get_task, load_split
    from transferbench.transforms import build_transform, protocol_transform

    task = get_task("cifar10")
    train, test = load_split(task, "train", data_root), load_split(task, "test", data_root)
    train_cfg = protocol_transform(task, "full", train=True, image_size=224)
    test_cfg = protocol_transform(task, "full", train=False, image_size=224)
    if path == "torchvision":
        loaders = TorchLoaders(Transformed(train.dataset, build_transform(train_cfg)),
                               Transformed(test.dataset, build_transform(test_cfg)), BATCH, BATCH, workers,
                               torch.device("cpu"))
        images, seconds = _epochs(lambda e: loaders.train(e, 1000 + e), epochs)
        return {"images_per_s": images / seconds}

    from transferbench.fastdata.convert import convert_task
    from transferbench.fastdata.ffcv_loader import ffcv_loaders

    mode = "raw" if path == "ffcv-raw" else "jpg"
    os.environ["TRANSFERBENCH_FFCV_DIR"] = str(data_root / f".ffcv-{mode}")  # one conversion per folder
    t0 = time.perf_counter()
    (sidecar, _) = convert_task("cifar10", data_root, splits=("train", "test"), num_workers=workers, write_mode=mode)
    convert_s = time.perf_counter() - t0
    loaders = ffcv_loaders(task, train, test, data_root, train_cfg, test_cfg, BATCH, BATCH, workers)
    images, seconds = _epochs(lambda e: loaders.train(e, 1000 + e), epochs)
    return {"images_per_s": images / seconds, "convert_s": convert_s,
            "beton_mib": Path(sidecar["beton"]).stat().st_size / 2**20}


def measure(path: str, data_root: Path, workers: int, epochs: int, python: str) -> dict | None:
    cmd = [python, __file__, "--child", path, "--data-root", str(data_root), "--workers", str(workers),
           "--epochs", str(epochs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  {path}: skipped ({tail})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(args: argparse.Namespace) -> None:
    result = run_path(args.child, args.data_root, args.workers, args.epochs)
    peak_kib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({**result, "peak_rss_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = FFCV threads (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per path; the first is not timed")
    parser.add_argument("--ffcv-python", default=sys.executable,
                        help="interpreter with transferbench[ffcv] installed (default: this one)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is a warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp)
        write_images(data_root, args.images)
        print(f"full fine-tuning train pipeline: {args.images} JPEGs 500x375, RandomResizedCrop 224 + flip + "
              f"normalize, batch {BATCH}, {args.workers} workers, {os.cpu_count()} cores; "
              f"{args.epochs - 1} timed epochs")
        results = {}
        for path in PATHS:
            python = args.ffcv_python if path.startswith("ffcv") else sys.executable
            results[path] = measure(path, data_root, args.workers, args.epochs, python)
        base = results["baseline"]["images_per_s"]
        ours = results["torchvision"]["images_per_s"] if results["torchvision"] else float("nan")
        print(f"{'path':<32}{'images/s':>10}{'ratio':>8}{'vs ours':>9}{'peak RSS MiB':>14}")
        for path, label in zip(PATHS, LABELS, strict=True):
            r = results[path]
            if r is None:
                print(f"{label:<32}{'-':>10}{'-':>8}{'-':>9}{'-':>14}")
                continue
            rate = r["images_per_s"]
            print(f"{label:<32}{rate:>10.1f}{rate / base:>7.2f}x{rate / ours:>8.2f}x{r['peak_rss_mib']:>14.0f}")
        print("ratio: against the plain baseline; vs ours: against transferbench's torchvision loader")
        for path in ("ffcv", "ffcv-raw"):
            if results[path]:
                print(f"{path}: conversion of {args.images + 10} images {results[path]['convert_s']:.1f} s, train "
                      f".beton {results[path]['beton_mib']:.0f} MiB (once per task)")


if __name__ == "__main__":
    main()
