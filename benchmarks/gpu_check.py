"""Every GPU path of transferbench in one command, in a few minutes on one GPU (issue #13, item 6).

    python benchmarks/gpu_check.py               # on a GPU node: ResNet50, 224 px
    python benchmarks/gpu_check.py --dry-run     # the same checks on the CPU with resnet_tiny (tests run this)

Prints the machine, then one line per check: PASS/FAIL/SKIP, its name, images/s, the fraction of the wall time
the GPU was busy (union of the CUDA kernels' intervals in torch.profiler, profiler on), peak GPU memory, and a
note. Exit status 0 when no check failed, 1 otherwise or without a GPU (one line on stderr).

Checks: extraction in each precision the package accepts (fp32, tf32, bf16, fp16: read from HParams'
``precision`` choices; a missing one is skipped with a note), a few full fine-tuning epochs with fixed 90% masks
(the mask must hold; in fp32 and in fp16 with loss scaling), the runner's loaders end to end over JPEGs (persistent
workers, the test split decoded once: its busy fraction is the one to read), the batched linear heads,
``--compile`` (few graphs, features close to eager), resume equality after a
SIGKILL of a fine-tuning subprocess, and 2:4 semi-structured sparse matmul where the GPU supports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

CLASSES = 10
PAUSE_ENV = "GPU_CHECK_PAUSE_AFTER_STATE"  # the resume check's child waits for its kill after the first epoch


@dataclasses.dataclass
class Outcome:
    status: str  # PASS, FAIL or SKIP
    images_per_s: float | None = None
    busy: float | None = None
    peak_mib: float | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Setup:
    device: torch.device
    arch: str
    image_size: int
    batch_size: int
    images: int  # per extraction / per fine-tuning epoch
    epochs: int
    work: Path


def machine(device: torch.device) -> str:
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    if device.type != "cuda":
        return f"machine: CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {versions}"
    props = torch.cuda.get_device_properties(device)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                                 str(device.index or 0)], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        driver = "unknown (no nvidia-smi)"
    return (f"machine: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
            f"driver {driver}, {versions}")


# --- measuring ------------------------------------------------------------------------------------------------


def busy_fraction(events, wall_us: float) -> float:
    """Share of ``wall_us`` covered by at least one CUDA kernel (overlapping kernels counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    covered, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered / wall_us if wall_us > 0 else 0.0


def measured(setup: Setup, images: int, work: Callable[[], str]) -> Outcome:
    """Run ``work`` (returns a note; raises AssertionError on a wrong result) and measure it."""
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            note = work()
            torch.cuda.synchronize(setup.device)
            wall = time.perf_counter() - start
        return Outcome("PASS", images / wall, busy_fraction(prof.events(), wall * 1e6),
                       torch.cuda.max_memory_allocated(setup.device) / 2**20, note)
    start = time.perf_counter()
    note = work()
    return Outcome("PASS", images / (time.perf_counter() - start), note=note)


def fmt(name: str, o: Outcome) -> str:
    cells = [f"{o.status:4s} {name:18s}",
             f"images/s={o.images_per_s:9.1f}" if o.images_per_s is not None else "images/s=      n/a",
             f"busy={o.busy:6.1%}" if o.busy is not None else "busy=   n/a",
             f"peak={o.peak_mib:8.0f} MiB" if o.peak_mib is not None else "peak=     n/a    "]
    return "  ".join([*cells, o.note])


# --- the data and model every check shares ------------------------------------------------------------------------


def dataset(setup: Setup, n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, setup.image_size, setup.image_size, generator=g),
                         torch.randint(0, CLASSES, (n,), generator=g))


def sparse_model(setup: Setup) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """``setup.arch`` with a fresh head and 90% random masks on its backbone (weights already masked)."""
    from transferbench.models import create_model
    from transferbench.sparsity import prunable_weights

    torch.manual_seed(0)
    model = create_model(setup.arch, num_classes=CLASSES)
    masks = {n: torch.rand(w.shape) >= 0.9 for n, w in prunable_weights(model, include_head=False).items()}
    with torch.no_grad():
        for name, weight in prunable_weights(model, include_head=False).items():
            weight.mul_(masks[name])
    return model, masks


def precisions() -> tuple[str, ...]:
    from transferbench.runspec import HParams

    field = next(f for f in dataclasses.fields(HParams) if f.name == "precision")
    return tuple(field.metadata.get("choices") or ("fp32",))


# --- the checks ---------------------------------------------------------------------------------------------------


def check_extraction(setup: Setup, precision: str, reference: dict) -> Outcome:
    from transferbench.finetune.features import extract

    if precision not in precisions():
        return Outcome("SKIP", note=f"--precision {precision} is not accepted by this version "
                                    f"(HParams precision choices: {', '.join(precisions())})")
    model, _ = sparse_model(setup)
    data = dataset(setup, setup.images, seed=1)
    out = {}

    def work() -> str:
        out["features"], _ = extract(model, data, setup.batch_size, setup.device, 0, f"extract {precision}",
                                     precision)
        assert torch.isfinite(out["features"]).all(), "non-finite features"
        assert not any(p.is_inference() for p in model.parameters()), "parameters became inference tensors"
        if precision == "fp32":
            reference["fp32"] = out["features"]
            return f"{tuple(out['features'].shape)} features"
        err = ((out["features"] - reference["fp32"]).norm() / reference["fp32"].norm()).item()
        assert err < 0.05, f"relative error {err:.3g} against fp32"
        return f"relative error against fp32 {err:.2e}"

    return measured(setup, setup.images, work)


def check_full(setup: Setup, precision: str = "fp32") -> Outcome:
    from transferbench.finetune.full import finetune_full
    from transferbench.runspec import resolve_hparams

    if precision not in precisions():
        return Outcome("SKIP", note=f"--precision {precision} is not accepted by this version")
    if precision == "fp16" and setup.device.type != "cuda":
        return Outcome("SKIP", note="fp16 with loss scaling is a GPU path (the CLI refuses it on CPU)")
    model, masks = sparse_model(setup)
    hp = resolve_hparams("full", 0.01, {"epochs": setup.epochs, "batch_size": setup.batch_size,
                                        "image_size": setup.image_size, "precision": precision})
    train, test = dataset(setup, setup.images, seed=2), dataset(setup, setup.batch_size, seed=3)
    work_dir = Path(tempfile.mkdtemp(dir=setup.work, prefix="full-"))

    def work() -> str:
        result = finetune_full(model, masks, train, test, CLASSES, hp, 0, work_dir, setup.device)
        assert result.sparsity_after["overall"] >= result.sparsity_before["overall"], "the mask did not hold"
        return (f"{setup.epochs} epochs x {setup.images // setup.batch_size} steps, backbone sparsity "
                f"{result.sparsity_after['overall']:.3f} kept")

    return measured(setup, setup.images * setup.epochs, work)


def check_pipeline(setup: Setup) -> Outcome:
    """The runner's loaders end to end: JPEGs decoded and augmented by persistent workers (this allocation's cores
    - 1), the test split decoded once and normalised on the device, masked fine-tuning with evaluation every epoch.
    Its busy fraction is the issue's target (>= 90% of the step time for ResNet50 on one GPU)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_loaders import write_images

    from transferbench.context import default_workers
    from transferbench.finetune.full import finetune_full
    from transferbench.finetune.loaders import runner_loaders
    from transferbench.runspec import resolve_hparams
    from transferbench.tasks import get_task, load_split
    from transferbench.transforms import protocol_transform

    data_root = Path(tempfile.mkdtemp(dir=setup.work, prefix="jpegs-"))
    write_images(data_root, setup.images, setup.images // 2)
    task, workers = get_task("cifar10"), default_workers()
    train, test = (load_split(task, s, data_root).dataset for s in ("train", "test"))
    train_cfg, test_cfg = (protocol_transform(task, "full", train=t, image_size=setup.image_size)
                           for t in (True, False))
    model, masks = sparse_model(setup)
    hp = resolve_hparams("full", 0.01, {"epochs": setup.epochs, "batch_size": setup.batch_size,
                                        "image_size": setup.image_size})
    work_dir = Path(tempfile.mkdtemp(dir=setup.work, prefix="pipeline-"))

    def work() -> str:
        loaders = runner_loaders(train, test, train_cfg, test_cfg, setup.batch_size, setup.batch_size, workers,
                                 setup.device, work_dir)
        result = finetune_full(model, masks, None, None, CLASSES, hp, 0, work_dir, setup.device, loaders=loaders)
        assert result.sparsity_after["overall"] >= result.sparsity_before["overall"], "the mask did not hold"
        return (f"{setup.images} JPEGs (500x375) x {setup.epochs} epochs + {setup.images // 2} test images decoded "
                f"once, {workers} loader workers")

    return measured(setup, setup.images * setup.epochs, work)


def check_heads(setup: Setup) -> Outcome:
    from transferbench.finetune.linear import train_sgd_heads
    from transferbench.runspec import resolve_hparams

    n, dim, epochs = 2048, 2048, 10
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(n, dim, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    hp = resolve_hparams("linear", 0.01, {"epochs": epochs})
    seeds = [0, 1, 2, 3, 4]

    def work() -> str:
        heads = train_sgd_heads(x, y, x[:256], y[:256], CLASSES, seeds, hp, setup.device)
        assert len(heads) == len(seeds) and all(0.0 <= h.top1 <= 1.0 for h in heads)
        return f"{len(seeds)} heads x {epochs} epochs on {n} x {dim} features (images/s counts feature rows)"

    return measured(setup, n * epochs * len(seeds), work)


def check_compile(setup: Setup, dry_run: bool) -> Outcome:
    from torch._dynamo.utils import counters

    from transferbench.finetune.features import extract
    from transferbench.runner import compile_model

    if setup.device.type == "cuda":
        try:
            import triton  # noqa: F401  (inductor's GPU code generator)
        except ImportError:
            return Outcome("FAIL", note="Triton is not installed: --compile cannot run on this GPU")
    model, _ = sparse_model(setup)
    data = dataset(setup, setup.images, seed=5)
    eager, _ = extract(model, data, setup.batch_size, setup.device, 0, "eager")
    real_compile = torch.compile
    if dry_run:  # inductor on a few CPU cores takes minutes; the eager backend still captures the graphs
        torch.compile = lambda fn, **kw: real_compile(fn, backend="eager", **kw)  # type: ignore[assignment]
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_model(model)
        extract(model, data, setup.batch_size, setup.device, 0, "compile warm-up")

        def work() -> str:
            compiled, _ = extract(model, data, setup.batch_size, setup.device, 0, "compiled")
            graphs = counters["stats"]["unique_graphs"]
            err = ((compiled - eager).norm() / eager.norm()).item()
            assert graphs <= 2, f"{graphs} graphs compiled"
            assert err < 1e-2, f"relative error {err:.3g} against eager"
            return f"{graphs} graph(s), relative error against eager {err:.1e}, after warm-up"

        return measured(setup, setup.images, work)
    finally:
        torch.compile = real_compile
        torch._dynamo.reset()


def check_ffcv(setup: Setup) -> Outcome:
    """Extraction of the built-in digits test split (299 images) read through FFCV (raw pixels) against the same
    images through torchvision: close features (FFCV resamples with OpenCV, torchvision with PIL)."""
    from transferbench.fastdata import FFCV_DIR_ENV, ffcv_available

    if not ffcv_available():
        return Outcome("SKIP", note="ffcv is not installed (pip install 'transferbench[ffcv]')")
    from transferbench.fastdata.convert import convert_task
    from transferbench.fastdata.ffcv_loader import open_split
    from transferbench.finetune.features import extract
    from transferbench.tasks import Transformed, get_task, load_split
    from transferbench.transforms import build_transform, protocol_transform

    task = get_task("digits")
    os.environ[FFCV_DIR_ENV] = str(setup.work / "ffcv")  # where open_split looks for the .beton
    convert_task(task.name, None, setup.work / "ffcv", splits=("test",), num_workers=2, write_mode="raw")
    split = load_split(task, "test", None)
    cfg = protocol_transform(task, "linear", train=False, image_size=setup.image_size)
    fast = open_split(task, split, "test", None, cfg)
    model, _ = sparse_model(setup)
    reference, _ = extract(model, Transformed(split.dataset, build_transform(cfg)), setup.batch_size,
                           setup.device, 0, "torchvision")

    def work() -> str:
        features, labels = extract(model, fast, setup.batch_size, setup.device, 2, "ffcv")
        assert torch.equal(labels, torch.as_tensor(split.labels).long()), "FFCV labels out of order"
        err = ((features - reference).norm() / reference.norm()).item()
        assert err < 0.1, f"relative error {err:.3g} against torchvision"
        return f"digits test split ({len(labels)} images, raw), relative error against torchvision {err:.1e}"

    return measured(setup, len(split.labels), work)


def check_sparse_24(setup: Setup) -> Outcome:
    if setup.device.type != "cuda" or torch.cuda.get_device_capability(setup.device) < (8, 0):
        return Outcome("SKIP", note="2:4 semi-structured sparsity needs a CUDA GPU of compute capability >= 8.0")
    from torch.sparse import to_sparse_semi_structured

    from transferbench.pruning.masks import nm_mask

    g = torch.Generator(device=setup.device).manual_seed(6)
    w = torch.randn(4096, 4096, device=setup.device, dtype=torch.float16, generator=g)
    w = w * nm_mask(w, 2, 4)
    x = torch.randn(4096, 1024, device=setup.device, dtype=torch.float16, generator=g)
    sparse = to_sparse_semi_structured(w)
    dense_out, sparse_out = w @ x, sparse @ x
    err = ((sparse_out - dense_out).float().norm() / dense_out.float().norm()).item()
    assert err < 1e-2, f"relative error {err:.3g} against the dense product"

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize(setup.device)
        start = time.perf_counter()
        for _ in range(20):
            fn()
        torch.cuda.synchronize(setup.device)
        return (time.perf_counter() - start) / 20

    dense_s, sparse_s = timed(lambda: w @ x), timed(lambda: sparse @ x)

    def work() -> str:
        for _ in range(20):
            sparse @ x
        return ""

    outcome = measured(setup, 20 * 1024, work)  # images/s counts the product's columns
    outcome.note = f"4096x4096 fp16 @ 4096x1024: {dense_s / sparse_s:.2f}x the dense matmul, rel. error {err:.1e}"
    return outcome


def check_engine_24(setup: Setup) -> Outcome:
    """``--engine semi-structured`` end to end: a ViT-S/16 whose blocks are 2:4 (nm_mask), its features through the
    engine against the dense bf16 model's on the same images, and both timed."""
    from transferbench.context import check_semi_structured
    from transferbench.errors import TransferbenchError
    from transferbench.finetune.features import extract_with
    from transferbench.models import create_model
    from transferbench.pruning.masks import nm_mask
    from transferbench.sparsity import set_weights

    try:
        check_semi_structured(setup.device)
    except TransferbenchError as exc:
        return Outcome("SKIP", note=str(exc).partition(";")[0])
    torch.manual_seed(6)
    model = create_model("vit_small_patch16_224", num_classes=1000).eval()
    with torch.no_grad():
        for weight in set_weights(model, "transformer_blocks").values():
            weight.mul_(nm_mask(weight, 2, 4))
    images = torch.utils.data.TensorDataset(torch.randn(8 * setup.batch_size, 3, 224, 224),
                                            torch.zeros(8 * setup.batch_size, dtype=torch.long))

    def features(engine: str) -> tuple[torch.Tensor, float]:
        extract_with(engine, model, torch.utils.data.Subset(images, range(setup.batch_size)), setup.batch_size,
                     setup.device, 0, "warm-up", precision="bf16")
        start = time.perf_counter()
        out, _ = extract_with(engine, model, images, setup.batch_size, setup.device, 0, engine, precision="bf16")
        return out, time.perf_counter() - start

    dense, dense_s = features("torch")
    sparse, sparse_s = features("semi-structured")
    err = ((sparse - dense).norm() / dense.norm()).item()
    assert err < 5e-2, f"relative error {err:.3g} against the dense bf16 features"
    return Outcome("PASS", len(images) / sparse_s, note=f"ViT-S/16 2:4 blocks, bf16: {dense_s / sparse_s:.2f}x the "
                   f"dense extraction ({len(images)} images incl. the copy), rel. error {err:.1e}")


def check_resume(setup: Setup) -> Outcome:
    """An uninterrupted fine-tuning subprocess against one SIGKILLed after its first epoch's state and resumed."""
    runs = {name: setup.work / f"resume-{name}" for name in ("straight", "killed")}
    child = [sys.executable, __file__, "--resume-child", "--device", str(setup.device), "--arch", setup.arch,
             "--image-size", str(setup.image_size), "--batch-size", str(setup.batch_size),
             "--images", str(setup.images), "--epochs", str(max(setup.epochs, 2))]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # deterministic cuBLAS, set before CUDA starts
    start = time.perf_counter()
    _child([*child, "--work-dir", str(runs["straight"])], env)
    proc = subprocess.Popen([*child, "--work-dir", str(runs["killed"])], env={**env, PAUSE_ENV: "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = runs["killed"] / "paused"
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before its kill: {proc.stderr.read().decode()[-300:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _child([*child, "--work-dir", str(runs["killed"])], env)
    wall = time.perf_counter() - start
    straight, resumed = (torch.load(runs[n] / "final.pt", weights_only=True) for n in ("straight", "killed"))
    assert resumed["resumed_from_epoch"] == 1, f"resumed from epoch {resumed['resumed_from_epoch']}, expected 1"
    differing = [k for k, v in straight["model"].items() if not torch.equal(v, resumed["model"][k])]
    assert not differing and torch.equal(straight["logits"], resumed["logits"]), \
        f"resumed run differs from the uninterrupted one in {len(differing)} tensor(s), e.g. {differing[:3]}"
    return Outcome("PASS", setup.images * max(setup.epochs, 2) * 2 / wall,
                   note="killed after epoch 1, resumed: weights and test logits bit-identical (3 processes timed)")


def _child(command: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"fine-tuning subprocess exited {proc.returncode}: {proc.stderr.strip()[-300:]}")


def resume_child(setup: Setup) -> None:
    """The resume check's subprocess: fine-tune, then save the final weights and logits."""
    import transferbench.finetune.full as full
    from transferbench.context import configure_determinism
    from transferbench.runspec import resolve_hparams

    configure_determinism()
    if os.environ.get(PAUSE_ENV) and not (setup.work / full.STATE_FILE).exists():
        saver = full.torch_save

        def save_then_wait(path, obj):  # the first epoch's state is on disk: wait here for the parent's SIGKILL
            saver(path, obj)
            (setup.work / "paused").touch()
            time.sleep(600)

        full.torch_save = save_then_wait
    model, masks = sparse_model(setup)
    hp = resolve_hparams("full", 0.01, {"epochs": setup.epochs, "batch_size": setup.batch_size,
                                        "image_size": setup.image_size})
    train, test = dataset(setup, setup.images, seed=2), dataset(setup, setup.batch_size, seed=3)
    result = full.finetune_full(model, masks, train, test, CLASSES, hp, 0, setup.work, setup.device)
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()},
                "logits": torch.as_tensor(result.test_logits), "resumed_from_epoch": result.resumed_from_epoch},
               setup.work / "final.pt")


# --- the command ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every check on the CPU with resnet_tiny (smoke test)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    p.add_argument("--arch", default=None, help="default: resnet50 (resnet_tiny with --dry-run)")
    p.add_argument("--image-size", type=int, default=None, help="default: 224 (32 with --dry-run)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 (8 with --dry-run)")
    p.add_argument("--images", type=int, default=None, help="images per extraction / epoch (default 1024, 32)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temporary folder)")
    p.add_argument("--resume-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_setup(args: argparse.Namespace) -> Setup:
    small = args.dry_run
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    return Setup(device=torch.device(args.device or ("cpu" if small else "cuda")),
                 arch=args.arch or ("resnet_tiny" if small else "resnet50"),
                 image_size=args.image_size or (32 if small else 224),
                 batch_size=args.batch_size or (8 if small else 64),
                 images=args.images or (32 if small else 1024), epochs=args.epochs, work=work)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not args.resume_child and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU is visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "run it on a GPU node, or add --dry-run for the CPU smoke test", file=sys.stderr)
        return 1
    setup = make_setup(args)
    if args.resume_child:
        resume_child(setup)
        return 0
    if setup.device.type == "cuda":
        torch.cuda.set_device(setup.device)
    print(machine(setup.device), flush=True)
    reference: dict = {}
    checks: list[tuple[str, Callable[[], Outcome]]] = [
        *[(f"extract-{p}", lambda p=p: check_extraction(setup, p, reference))
          for p in ("fp32", "tf32", "bf16", "fp16")],
        ("full-masked", lambda: check_full(setup)),
        ("full-masked-fp16", lambda: check_full(setup, "fp16")),
        ("full-pipeline", lambda: check_pipeline(setup)),
        ("linear-heads", lambda: check_heads(setup)),
        ("compile", lambda: check_compile(setup, args.dry_run)),
        ("ffcv", lambda: check_ffcv(setup)),
        ("resume-after-kill", lambda: check_resume(setup)),
        ("sparse-2:4", lambda: check_sparse_24(setup)),
        ("engine-2:4", lambda: check_engine_24(setup)),
    ]
    failed = 0
    start = time.perf_counter()
    for name, check in checks:
        try:
            outcome = check()
        except Exception as exc:  # a check that breaks is a FAIL line, and the others still run
            outcome = Outcome("FAIL", note=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        failed += outcome.status == "FAIL"
        print(fmt(name, outcome), flush=True)
    print(f"{failed} check(s) failed, {time.perf_counter() - start:.0f} s in all", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
