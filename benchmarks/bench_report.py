"""Collecting a large results store: `collect` + every leaderboard, against a plain json.load loop.

    python benchmarks/bench_report.py                   # 100,000 records in a temporary folder
    python benchmarks/bench_report.py --n 20000 --keep /tmp/store

Records are written in the real layout (``runs/<run_key>/result.json``) with the fields and sizes of real ones:
a 150-epoch training curve and ResNet50's 54 per-layer sparsities (about 20 KB each). Both timings read from the
page cache (the files were just written), so they measure parsing and table building, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from transferbench.report import collect, write_leaderboards
from transferbench.report.collect import default_workers

TASKS = [
    "aircraft",
    "birds",
    "caltech101",
    "caltech256",
    "cars",
    "cifar10",
    "cifar100",
    "dtd",
    "flowers",
    "food101",
    "pets",
    "sun397",
]
CELLS = [("dense", 0.0)] + [
    (m, s) for m in ("acdc", "rigl_erk1x", "rigl_erk5x", "str", "woodfisher", "lth_t", "gmp") for s in (0.8, 0.9, 0.95)
]


def _blob() -> str:
    """The bulky, run-independent part of a record (curve, per-layer sparsity, config), as JSON text."""
    curve = [
        {
            "epoch": e,
            "lr": 0.01 * 0.1 ** (e // 50),
            "train_loss": 2.0 / (1 + e),
            "top1": 0.5 + e / 400,
            "mean_per_class_acc": 0.49 + e / 400,
        }
        for e in range(150)
    ]
    layers = {
        f"layer{i // 13 + 1}.{i % 13}.conv.weight": {"numel": 65536, "zeros": 58982, "sparsity": 0.9} for i in range(54)
    }
    config = {
        "hparams": {
            "solver": "sgd",
            "epochs": 150,
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "batch_size": 64,
            "lr_decay_after": [50, 100],
        },
        "device": "cpu",
        "transforms": {"train": "Resize(256) CenterCrop(224)", "test": "Resize(256) CenterCrop(224)"},
    }
    return json.dumps(
        {
            "curve": curve,
            "config": config,
            "per_layer": layers,
            "hardware": {"host": "node01", "cpu": "AMD EPYC", "threads": 2},
            "versions": {"python": "3.11", "torch": "2.5", "transferbench": "0.1.0"},
        }
    )[1:-1]


def write_store(root: Path, n: int) -> None:
    blob = _blob()
    runs = root / "runs"
    runs.mkdir(parents=True)
    for i in range(n):
        method, sparsity = CELLS[i % len(CELLS)]
        task = TASKS[(i // len(CELLS)) % len(TASKS)]
        mode = "linear" if (i // (len(CELLS) * len(TASKS))) % 2 == 0 else "full"
        seed = i // (len(CELLS) * len(TASKS) * 2)
        arch = "resnet50_rigl" if method.startswith("rigl") else "resnet50"
        key = f"{task}.{method}{sparsity * 100:g}.{arch}.{mode}.s{seed}.{i:012x}"
        top1 = 0.6 + 0.3 * ((i * 7919) % 1000) / 1000
        text = (
            f'{{"schema_version": 1, "run_key": "{key}", "status": "completed", '
            f'"created_at": "2026-01-01T00:00:00+00:00", "task": "{task}", "method": "{method}", '
            f'"arch": "{arch}", "mode": "{mode}", "seed": {seed}, "target_sparsity": {sparsity}, '
            f'"checkpoint": {{"identity": "{arch}_{method}_{sparsity}", "sha256": "{"0" * 64}", "arch": "{arch}", '
            f'"upstream_top1": 75.0}}, "sparsity": {{"backbone_before": {sparsity}, "backbone_after": {sparsity}, '
            f'"upstream_measured": {sparsity}}}, "metrics": {{"top1": {top1}, "mean_per_class_acc": {top1 - 0.01}, '
            f'"primary_metric": "top1", "primary": {top1}, "best_epoch": 149, "best_top1": {top1}}}, '
            f'"timings": {{"total_s": 100.0}}, "predictions": "predictions.npz", {blob}}}'
        )
        d = runs / key
        os.mkdir(d)
        with open(d / "result.json", "w") as fh:
            fh.write(text)


def baseline(root: Path) -> pd.DataFrame:
    """What a script would do: json.load every record, pick the fields, one DataFrame."""
    rows = []
    for d in sorted((root / "runs").iterdir()):
        with open(d / "result.json") as fh:
            r = json.load(fh)
        m = r["metrics"]
        rows.append(
            {
                "run_key": r["run_key"],
                "task": r["task"],
                "method": r["method"],
                "arch": r["arch"],
                "mode": r["mode"],
                "seed": r["seed"],
                "target_sparsity": r["target_sparsity"],
                "top1": m["top1"],
                "mean_per_class_acc": m["mean_per_class_acc"],
                "primary": m["primary"],
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="number of records (default 100,000)")
    ap.add_argument("--keep", type=Path, help="write the store here and keep it (reused if it exists)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        if not (root / "runs").is_dir():
            t = time.perf_counter()
            write_store(root, args.n)
            print(f"wrote {args.n:,} records in {time.perf_counter() - t:.1f} s to {root}")
        n = sum(1 for _ in os.scandir(root / "runs"))
        size = sum(e.stat().st_size for e in os.scandir(next(os.scandir(root / "runs")).path)) / 1024
        print(f"{n:,} records of about {size:.0f} KB; {default_workers()} worker process(es)")

        t = time.perf_counter()
        base = baseline(root)
        t_base = time.perf_counter() - t
        print(f"baseline (json.load loop + pandas DataFrame): {t_base:.2f} s")

        t = time.perf_counter()
        collection = collect(root)
        t_collect = time.perf_counter() - t
        out = Path(tempfile.mkdtemp(prefix="bench_lb_"))
        t = time.perf_counter()
        paths = write_leaderboards(collection.runs, out)
        t_lb = time.perf_counter() - t
        shutil.rmtree(out)
        assert collection.n_completed == len(base) == n, (collection.n_completed, len(base), n)
        total = t_collect + t_lb
        print(f"transferbench collect: {t_collect:.2f} s; leaderboards ({len(paths)} files): {t_lb:.2f} s")
        print(f"collect + leaderboards: {total:.2f} s ({total / t_base:.2f}x the baseline's time; target < 10 s)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
