"""Fast paths against the plain-PyTorch baseline, on one workload, in one run: images/s and peak memory.

    python benchmarks/bench_fast.py                      # ResNet50 at 90% sparsity, 256 JPEGs (500x375)
    python benchmarks/bench_fast.py --images 512 --compile --device cuda

Workload: frozen-feature extraction for a linear probe (decode + Resize 256 + CenterCrop 224 + normalize,
batch 64, one loader worker, ResNet50 `forward_features`), the linear runner's job, over the train folder of a
task in the pre-split layout (cifar10's card; photo-like JPEGs from bench_loaders.write_images). Every path runs
in a fresh subprocess, so its peak RSS (with the DeepSparse worker's, for that path) is its own; on CUDA the
peak GPU memory is reported too.

- baseline: plain eager PyTorch, NCHW, fp32, `no_grad`, torchvision `ImageFolder` + `DataLoader`
- transferbench fp32: `features.extract` over the runner's dataset (inference_mode + channels_last), the
  protocol's numbers
- transferbench bf16: `--precision bf16` autocast (not the protocol)
- compile (`--compile`): the fp32 path with `runner.compile_model` (inductor), as `run --compile`; compile
  time excluded
- ffcv (jpg q90) and ffcv (raw): `--loader ffcv` over the `.beton` of `transferbench data convert` (default
  JPEG q90, and `--write-mode raw`), fp32; conversion time excluded (once per task); needs the `ffcv` extra
- deepsparse: `--engine deepsparse` (needs $TRANSFERBENCH_DEEPSPARSE_PYTHON), engine compile excluded
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

from bench_loaders import write_images  # the same photo-like JPEGs, in cifar10's pre-split layout

PATHS = ("baseline", "fp32", "bf16", "compile", "ffcv", "ffcv-raw", "deepsparse")


def sparse_resnet50(sparsity: float):
    import torch

    from transferbench.models import create_model
    from transferbench.sparsity import prunable_weights

    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000).eval()
    weights = prunable_weights(model, include_head=False)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    threshold = magnitudes.kthvalue(int(sparsity * magnitudes.numel())).values
    with torch.no_grad():
        for w in weights.values():
            w.mul_(w.abs() > threshold)
    return model


def run_path(path: str, data_root: Path, sparsity: float, device_name: str) -> dict:
    """One path, in this (fresh) process: images/s over the train folder after a one-batch warm-up."""
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from transferbench.finetune.features import extract
    from transferbench.runner import compile_model
    from transferbench.tasks import Transformed, get_task, load_split
    from transferbench.transforms import build_transform, protocol_transform

    device = torch.device(device_name)
    task = get_task("cifar10")
    cfg = protocol_transform(task, "linear", train=False)  # ImageNet statistics, both splits (pitfall P1)
    model = sparse_resnet50(sparsity).to(device)
    warm = torch.randn(64, 3, 224, 224, device=device)
    n = len(load_split(task, "train", data_root))

    warmup = {"s": 0.0}

    def timed_extract(dataset) -> float:
        start = time.perf_counter()
        with torch.inference_mode():  # for --compile, the first batch compiles the model
            model.to(memory_format=torch.channels_last).forward_features(
                warm.contiguous(memory_format=torch.channels_last))
        warmup["s"] = time.perf_counter() - start
        start = time.perf_counter()
        extract(model, dataset, 64, device, 1, "bench", precision="bf16" if path == "bf16" else "fp32")
        return time.perf_counter() - start

    worker_mb = 0.0
    if path == "baseline":
        transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                               T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        dataset = ImageFolder(str(data_root / "cifar10" / "train"), transform=transform)
        with torch.no_grad():
            model(warm)
            start = time.perf_counter()
            for images, _ in DataLoader(dataset, batch_size=64, num_workers=1):
                model.forward_features(images.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    elif path in ("fp32", "bf16", "compile"):
        if path == "compile":
            compile_model(model)
        split = load_split(task, "train", data_root)
        seconds = timed_extract(Transformed(split.dataset, build_transform(cfg)))
    elif path in ("ffcv", "ffcv-raw"):
        from transferbench.fastdata.convert import convert_task
        from transferbench.fastdata.ffcv_loader import open_split

        mode = "raw" if path == "ffcv-raw" else "jpg"
        os.environ["TRANSFERBENCH_FFCV_DIR"] = str(data_root / f".ffcv-{mode}")  # one conversion per folder
        convert_task("cifar10", data_root, splits=("train",), num_workers=1, write_mode=mode)
        seconds = timed_extract(open_split(task, load_split(task, "train", data_root), "train", data_root, cfg))
    elif path == "deepsparse":
        from transferbench.finetune.sparse_cpu import DeepSparseEngine, export_backbone

        split = load_split(task, "train", data_root)
        dataset = Transformed(split.dataset, build_transform(cfg))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()  # warm-up: ONNX export, engine compilation, a first batch
            onnx_path = export_backbone(model, Path(tmp) / "rn50.onnx", warm.cpu())
            with DeepSparseEngine(onnx_path, 64) as engine:
                engine(warm.cpu().numpy())
                warmup["s"] = time.perf_counter() - start
                start = time.perf_counter()
                for images, _ in DataLoader(dataset, batch_size=64, num_workers=1):
                    engine(images.numpy())
                seconds = time.perf_counter() - start
                worker_mb = engine.peak_rss_mb() or float("nan")
    else:
        raise SystemExit(f"unknown path {path}")
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return {"images_per_s": n / seconds, "worker_peak_mb": worker_mb, "gpu_peak_mb": gpu_mb, "warmup_s": warmup["s"]}


def measure(path: str, data: Path, sparsity: float, device: str) -> dict | None:
    """Run ``path`` in a fresh subprocess, which reports its own peak RSS (DataLoader workers not included)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", path, "--data", str(data), "--sparsity",
                             str(sparsity), "--device", device], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        print(f"  {path}: failed ({lines[-1] if lines else proc.returncode})", file=sys.stderr)
        return None
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_mb"] = result.pop("self_peak_mb")
    return result


def child_main(args: argparse.Namespace) -> None:
    result = run_path(args.child, Path(args.data), args.sparsity, args.device)
    result["self_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes to compile)")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    import torch

    paths = ["baseline", "fp32"] + (["bf16"] if args.device != "cpu" or torch.backends.mkldnn.is_available() else [])
    if args.compile:
        paths.append("compile")
    from transferbench.fastdata import ffcv_available

    if ffcv_available():
        paths += ["ffcv", "ffcv-raw"]
    else:
        print("ffcv paths skipped: FFCV is not installed (pip install 'transferbench[ffcv]')")
    if args.device == "cpu" and os.environ.get("TRANSFERBENCH_DEEPSPARSE_PYTHON"):
        paths.append("deepsparse")
    print(f"ResNet50 at {args.sparsity:.0%} sparsity, feature extraction of {args.images} JPEGs (500x375), "
          f"batch 64, device {args.device}, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="tb-bench-fast-") as tmp:
        write_images(Path(tmp), args.images)
        results = {p: measure(p, Path(tmp), args.sparsity, args.device) for p in paths}
    base = results["baseline"]["images_per_s"] if results.get("baseline") else float("nan")
    print(f"{'path':<12} {'images/s':>9} {'vs baseline':>12} {'peak RSS MB':>12} {'+ worker MB':>12} "
          f"{'peak GPU MB':>12} {'warm-up s':>10}")
    for path, r in results.items():
        if r is not None:
            print(f"{path:<12} {r['images_per_s']:>9.1f} {r['images_per_s'] / base:>11.2f}x {r['peak_mb']:>12.0f} "
                  f"{r['worker_peak_mb']:>12.0f} {r['gpu_peak_mb']:>12.0f} {r['warmup_s']:>10.1f}")


if __name__ == "__main__":
    main()
