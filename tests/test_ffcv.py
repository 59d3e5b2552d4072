"""The FFCV backend: `transferbench data convert` and `run --loader ffcv`.

Tests that need ffcv skip where it is not installed, and fail instead when TRANSFERBENCH_REQUIRE_FFCV=1 (CI
installs the extra). Every test is time-bounded: a mis-ordered FFCV pipeline spins forever (libffcv/ffcv#396).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import learnable_image, write_task
from fixtures_models import write_pruned_checkpoint
from PIL import Image

from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.fastdata import FFCV_DIR_ENV, beton_path, ffcv_available, labels_digest, sidecar_path
from transferbench.fastdata.ffcv_loader import find_beton
from transferbench.tasks import Transformed, get_task, load_split
from transferbench.transforms import build_transform, protocol_transform

pytestmark = [
    pytest.mark.timeout(120),
    # numba's dispatcher finalizers raise KeyError when ffcv's jitted pipelines are collected (numba bug, harmless)
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

# FFCV resamples the crop with OpenCV's INTER_AREA in one step, torchvision resizes the whole image (PIL, antialiased
# bilinear) and then crops, so crop edges differ by up to half a pixel; the .beton also re-encodes each image as a
# quality-90 JPEG (raw mode stores the decoded pixels). Measured on the smooth 48x36 images below at --image-size 32:
# per-image mean |difference| <= 4.1 of 255 with jpg, <= 1.75 with raw (resampling alone). Wrong statistics, channel
# order or crop geometry give 30+.
MEAN_ABS_TOLERANCE = {"jpg": 8.0, "raw": 3.0}  # per image, in 0-255 pixel units, after undoing the normalisation


@pytest.fixture
def need_ffcv() -> None:
    if not ffcv_available():
        if os.environ.get("TRANSFERBENCH_REQUIRE_FFCV"):
            pytest.fail("TRANSFERBENCH_REQUIRE_FFCV=1 but ffcv is not importable: pip install -e '.[ffcv]'")
        pytest.skip("ffcv is not installed (pip install 'transferbench[ffcv]'); set TRANSFERBENCH_REQUIRE_FFCV=1 "
                    "to make this a failure")


@pytest.fixture(autouse=True)
def collect_ffcv_garbage():
    """Run those finalizers here, not inside a later test's ast.parse: on Python 3.11 an exception raised during
    AST construction surfaces as "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905), which
    crashed pytest's terminal summary once."""
    yield
    gc.collect()


@pytest.fixture
def ffcv_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(FFCV_DIR_ENV, str(tmp_path / "ffcv"))
    return tmp_path / "ffcv"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv")
    data = root / "data"
    write_task("cifar10", data, "folders", train_per_class=12, test_per_class=6, image_size=16,
               image_fn=learnable_image)
    ckpt = root / "tiny_50.pth"
    write_pruned_checkpoint(ckpt, sparsity=0.5)
    return root, data, ckpt


def _run_args(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--checkpoint", str(ckpt), "--sparsity", "0.5", "--method", "magnitude", "--task", "cifar10",
            "--data-root", str(data), "--results", str(out), "--image-size", "32", "--workers", "1", "--loader", "ffcv",
            *extra]


def _smooth_image(class_index: int, sample_index: int, rng: np.random.Generator) -> Image.Image:
    """Low-frequency colour waves in landscape and portrait shapes: resampling differences stay small, while a
    wrong crop, flip or channel order would not."""
    w, h = (48, 36) if sample_index % 2 else (36, 48)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 2 * np.pi, 3)
    waves = [127 + 100 * np.sin(2 * np.pi * 0.7 * (x * (1 + class_index % 3) + y * (1 + k)) + phase[k])
             for k in range(3)]
    return Image.fromarray(np.stack(waves, -1).clip(0, 255).astype(np.uint8))


def _read_all(source) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for x, y in source:
        images.append(x.clone())  # FFCV overwrites its image buffer once the next batch is fetched
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


# ------------------------------------------------------------------------------------- without ffcv


def test_importing_transferbench_never_imports_ffcv():
    code = ("import sys, transferbench, transferbench.cli, transferbench.runner, transferbench.fastdata.convert, "
            "transferbench.fastdata.ffcv_loader; bad = {'ffcv', 'numba', 'cv2'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loader_ffcv_without_ffcv_is_a_one_line_error_and_writes_nothing(setup, tmp_path, monkeypatch, capsys):
    _, data, ckpt = setup
    monkeypatch.setitem(sys.modules, "ffcv", None)  # `import ffcv` now raises ImportError, as when not installed
    for mode in ("full", "linear"):
        out = tmp_path / mode
        assert main(_run_args(data, ckpt, out, "--mode", mode, "--epochs", "1")) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("error: --loader ffcv needs FFCV: pip install 'transferbench[ffcv]' (system packages "
                       "libopencv-dev libturbojpeg0-dev pkg-config); or use --loader torchvision")
        assert not out.exists()
    assert main(["data", "convert", "--task", "digits", "--out", str(tmp_path / "conv")]) == 2
    assert "transferbench data convert needs FFCV" in capsys.readouterr().err
    assert not (tmp_path / "conv").exists()


def _fake_conversion(root: Path, split, name: str = "test", res: int = 512, **changes) -> Path:
    path = beton_path(root, "cifar10", name, res, 90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    meta = {"format": 1, "num_samples": len(split), "labels_digest": labels_digest(split.labels),
            "layout": split.layout, "source_root": str(split.root), **changes}
    sidecar_path(path).write_text(json.dumps(meta))
    return path


def test_missing_stale_and_ambiguous_beton_files_are_one_line_errors(setup, ffcv_dir):
    _, data, _ = setup
    task = get_task("cifar10")
    split = load_split(task, "test", data)
    with pytest.raises(TransferbenchError) as err:
        find_beton(task.name, split, "test", data)
    assert str(err.value) == (f"--loader ffcv: {ffcv_dir}/cifar10/test_r512_q90.beton does not exist; write it "
                              f"with `transferbench data convert --task cifar10 --data-root {data}`")
    path = _fake_conversion(ffcv_dir, split, num_samples=len(split) + 1)
    with pytest.raises(TransferbenchError, match=f"{path} is stale: written with num_samples 61 \\(data now: 60\\)"):
        find_beton(task.name, split, "test", data)
    _fake_conversion(ffcv_dir, split, labels_digest="0" * 16, layout="official")
    with pytest.raises(TransferbenchError, match=r"is stale: .*labels_digest.*layout 'official'") as err:
        find_beton(task.name, split, "test", data)
    assert "\n" not in str(err.value) and "transferbench data convert --task cifar10" in str(err.value)
    _fake_conversion(ffcv_dir, split, source_root="/elsewhere/cifar10")  # same labels, other images
    with pytest.raises(TransferbenchError, match="source_root '/elsewhere/cifar10'"):
        find_beton(task.name, split, "test", data)
    path = _fake_conversion(ffcv_dir, split)
    assert find_beton(task.name, split, "test", data)[0] == path
    path.unlink()  # any one conversion is used; two are refused, the default among them too
    other = _fake_conversion(ffcv_dir, split, res=384)
    assert find_beton(task.name, split, "test", data)[0] == other
    _fake_conversion(ffcv_dir, split)
    with pytest.raises(TransferbenchError, match=r"several conversions of the test split .*test_r384_q90\.beton, "
                                                 r"test_r512_q90\.beton.*delete all but one"):
        find_beton(task.name, split, "test", data)


def test_ffcv_cannot_feed_deepsparse(setup, tmp_path, capsys):
    _, data, ckpt = setup
    assert main(_run_args(data, ckpt, tmp_path, "--engine", "deepsparse")) == 2
    assert "drop --loader ffcv" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- with ffcv


def test_convert_a_mini_task(need_ffcv, ffcv_dir, capsys):
    assert main(["data", "convert", "--task", "digits", "--workers", "1"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    task = get_task("digits")
    for meta, name in zip(printed, ("train", "test"), strict=True):
        split = load_split(task, name, None)
        path = ffcv_dir / "digits" / f"{name}_r512_q90.beton"
        assert meta["beton"] == str(path) and path.is_file()
        assert json.loads(sidecar_path(path).read_text()) == meta
        assert (meta["num_samples"], meta["layout"], meta["labels_digest"]) == (
            len(split), "builtin", labels_digest(split.labels))
    from transferbench.fastdata.ffcv_loader import open_split

    test = load_split(task, "test", None)
    cfg = protocol_transform(task, "full", train=False, image_size=32)
    images, labels = _read_all(open_split(task, test, "test", None, cfg).batches(64, 1))
    assert labels.tolist() == test.labels and images.shape == (len(test), 3, 32, 32)


@pytest.mark.parametrize("layout", ["folders", "official"])
def test_convert_a_paper_task_in_either_layout(need_ffcv, tmp_path, layout):
    data = tmp_path / "data"
    info = write_task("dtd", data, layout, train_per_class=1, test_per_class=1, image_size=20)
    assert main(["data", "convert", "--task", "dtd", "--data-root", str(data), "--max-resolution", "16",
                 "--quality", "80", "--splits", "test", "--workers", "2"]) == 0
    path = data / ".ffcv" / "dtd" / "test_r16_q80.beton"
    meta = json.loads(sidecar_path(path).read_text())
    assert (meta["num_samples"], meta["layout"], meta["max_resolution"]) == (info["test_size"], layout, 16)
    assert not (data / ".ffcv" / "dtd" / "train_r16_q80.beton").exists()
    from transferbench.fastdata.ffcv_loader import open_split

    task = get_task("dtd")
    test = load_split(task, "test", data)
    images, labels = _read_all(open_split(task, test, "test", data, protocol_transform(task, "linear", False,
                                                                                      image_size=16)).batches(32, 1))
    assert labels.tolist() == test.labels and images.shape == (len(test), 3, 16, 16)


@pytest.mark.parametrize("write_mode", ["jpg", "raw"])
def test_ffcv_and_torchvision_give_the_same_test_images(need_ffcv, tmp_path, ffcv_dir, write_mode):
    data = tmp_path / "data"
    write_task("cifar10", data, "folders", train_per_class=1, test_per_class=4, image_fn=_smooth_image)
    assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data), "--splits", "test",
                 "--write-mode", write_mode]) == 0
    name = "test_r512_q90" if write_mode == "jpg" else "test_r512_raw"
    assert json.loads(sidecar_path(ffcv_dir / "cifar10" / f"{name}.beton").read_text())["write_mode"] == write_mode
    from transferbench.fastdata.ffcv_loader import open_split

    task = get_task("cifar10")
    test = load_split(task, "test", data)
    for mode in ("full", "linear"):  # task statistics, ImageNet statistics
        cfg = protocol_transform(task, mode, train=False, image_size=32)
        reference = torch.stack([img for img, _ in Transformed(test.dataset, build_transform(cfg))])
        images, labels = _read_all(open_split(task, test, "test", data, cfg).batches(16, 1))
        assert labels.tolist() == test.labels and images.shape == reference.shape
        pixels = ((images - reference) * torch.tensor(cfg.std).view(1, 3, 1, 1) * 255).abs()
        assert pixels.mean(dim=(1, 2, 3)).max() < MEAN_ABS_TOLERANCE[write_mode]


def test_train_order_is_a_function_of_the_epoch_seed(need_ffcv, setup, ffcv_dir):
    _, data, _ = setup
    assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data)]) == 0
    from transferbench.fastdata.ffcv_loader import ffcv_loaders

    task = get_task("cifar10")
    train, test = load_split(task, "train", data), load_split(task, "test", data)
    cfgs = [protocol_transform(task, "full", train=t, image_size=32) for t in (True, False)]
    loaders = ffcv_loaders(task, train, test, data, *cfgs, batch_size=16, eval_batch_size=32, num_workers=2)
    orders = [_read_all(loaders.train(epoch, seed))[1].tolist() for epoch, seed in ((0, 5), (1, 6), (0, 5))]
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[0]) == sorted(train.labels)
    assert _read_all(loaders.test())[1].tolist() == test.labels


@pytest.mark.slow
def test_full_and_linear_runs_with_the_ffcv_loader(need_ffcv, setup, tmp_path, ffcv_dir, capsys):
    _, data, ckpt = setup
    out = tmp_path / "out"
    assert main(_run_args(data, ckpt, out, "--mode", "full", "--epochs", "2", "--lr", "0.05")) == 2
    assert "train_r512_q90.beton does not exist; write it with `transferbench data convert" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data)]) == 0

    assert main(_run_args(data, ckpt, out, "--mode", "full", "--epochs", "2", "--lr", "0.05")) == 0
    (path,) = out.glob("runs/*.full.*/result.json")
    rec = json.loads(path.read_text())
    assert rec["config"]["hparams"]["loader"] == "ffcv" and len(rec["curve"]) == 2
    assert rec["config"]["ffcv"] == {"train": {"beton": "train_r512_q90", "beton_format": 1},
                                     "test": {"beton": "test_r512_q90", "beton_format": 1},
                                     "normalization": "on the host"}
    assert rec["sparsity"]["backbone_before"] == rec["sparsity"]["backbone_after"] > 0.45
    assert np.isfinite(rec["curve"][-1]["train_loss"]) and "top1" in rec["curve"][-1]
    assert not (out / "work" / rec["run_key"]).exists()

    for seed in ("21", "51"):
        assert main(_run_args(data, ckpt, out, "--mode", "linear", "--epochs", "30", "--lr", "0.1", "--seed", seed,
                              "--cache-dir", str(tmp_path / "cache"))) == 0
    records = {r["seed"]: r for r in (json.loads(p.read_text()) for p in out.glob("runs/*.linear.*/result.json"))}
    assert records[21]["metrics"]["top1"] > 0.4  # chance is 0.1
    assert records[51]["timings"]["features_cached"] and not records[21]["timings"]["features_cached"]
    # the torchvision features of the same checkpoint are not the FFCV ones: different cache entries
    args = _run_args(data, ckpt, tmp_path / "tv", "--mode", "linear", "--epochs", "30", "--lr", "0.1",
                     "--cache-dir", str(tmp_path / "cache"))
    args[args.index("--loader") + 1] = "torchvision"
    assert main(args) == 0
    (tv,) = (tmp_path / "tv").glob("runs/*/result.json")
    assert not json.loads(tv.read_text())["timings"]["features_cached"]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4


def test_ffcv_leaves_torch_threads_alone(need_ffcv, setup, ffcv_dir):
    """ffcv calls torch.set_num_threads on import and per Loader; the model must keep the job's threads."""
    _, data, _ = setup
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither ffcv's 1 nor the loader's worker count
    try:
        code = ("import torch; torch.set_num_threads(3); from transferbench.fastdata import require_ffcv; "
                "require_ffcv(); print(torch.get_num_threads())")
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip() == "3"  # a fresh import, as in `transferbench run`
        assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data), "--splits", "test"]) == 0
        from transferbench.fastdata.ffcv_loader import open_split

        task = get_task("cifar10")
        test = load_split(task, "test", data)
        batches = open_split(task, test, "test", data, protocol_transform(task, "linear", False, image_size=16))
        assert torch.get_num_threads() == 3
        for _ in batches.batches(16, num_workers=1):
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_an_unreadable_image_fails_the_conversion_in_one_line_without_hanging(need_ffcv, tmp_path, ffcv_dir, capsys):
    data = tmp_path / "data"
    write_task("cifar10", data, "folders", train_per_class=1, test_per_class=3, image_size=16)
    bad = sorted((data / "cifar10" / "test").rglob("*.jpg"))[4]
    bad.write_bytes(b"not a jpeg")
    thin = sorted((data / "cifar10" / "test").rglob("*.jpg"))[7]
    Image.new("RGB", (600, 1), "white").save(thin)  # 0 px tall at --max-resolution 512
    assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data), "--splits", "test",
                 "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "and 1 more" in err and "nothing written for the test split" in err
    assert f"cannot read image {bad}" in err or "600x1 px" in err
    assert not list(ffcv_dir.rglob("*.beton")) and not list(ffcv_dir.rglob("*.json"))
    assert not list(ffcv_dir.rglob(".*"))  # neither the temporary file nor the error list is left


def _solid(class_index: int, sample_index: int, rng: np.random.Generator) -> Image.Image:
    color = (30 + 20 * class_index, 200 - 15 * class_index, 90 + 10 * (sample_index % 5))
    return Image.new("RGB", (40, 30), color)


def _ramp(class_index: int, sample_index: int, rng: np.random.Generator) -> Image.Image:
    """Dark on the left, bright on the right, in every channel: a flip shows as a reversed ramp."""
    return Image.fromarray(np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], 30, 0).repeat(3, 2))


def test_train_pipeline_normalises_with_the_task_statistics_and_flips_half(need_ffcv, tmp_path, ffcv_dir):
    from transferbench.fastdata.ffcv_loader import ffcv_loaders

    task = get_task("cifar10")
    cfg = protocol_transform(task, "full", train=True, image_size=24)
    test_cfg = protocol_transform(task, "full", train=False, image_size=24)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    for image_fn in (_solid, _ramp):
        data = tmp_path / image_fn.__name__
        write_task("cifar10", data, "folders", train_per_class=4, test_per_class=1, image_fn=image_fn)
        os.environ[FFCV_DIR_ENV] = str(tmp_path / f"ffcv{image_fn.__name__}")
        assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data), "--write-mode", "raw"]) == 0
        train, test = load_split(task, "train", data), load_split(task, "test", data)
        loaders = ffcv_loaders(task, train, test, data, cfg, test_cfg, batch_size=16, eval_batch_size=16,
                               num_workers=64)  # more than the cores: clamped, not an error
        order = np.random.default_rng(3).permutation(len(train))  # EpochSeededOrder's draw for seed 3
        images, labels = _read_all(loaders.train(0, 3))
        assert labels.tolist() == [train.labels[i] for i in order]
        pixels = images * std + mean  # back to 0..1
        if image_fn is _solid:  # any crop of a solid image is that colour: exactly the task's normalisation
            expected = torch.stack([torch.tensor(np.asarray(train.dataset[i][0].convert("RGB"))[0, 0] / 255.0)
                                    for i in order]).float()
            assert torch.allclose(pixels.mean(dim=(2, 3)), expected, atol=2 / 255)
        else:  # the ramp rises left to right unless flipped
            rising = (pixels[:, :, :, -4:].mean(dim=(1, 2, 3)) > pixels[:, :, :, :4].mean(dim=(1, 2, 3))).float()
            assert 0.2 < rising.mean() < 0.8, rising.mean()
    del os.environ[FFCV_DIR_ENV]


def test_an_epoch_left_early_stops_ffcvs_thread(need_ffcv, setup, ffcv_dir):
    import threading
    import time

    _, data, _ = setup
    assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data), "--splits", "test"]) == 0
    from transferbench.fastdata.ffcv_loader import open_split

    task = get_task("cifar10")
    test = load_split(task, "test", data)
    batches = open_split(task, test, "test", data, protocol_transform(task, "linear", False, image_size=16))
    loader = batches.batches(8, num_workers=1)
    before = threading.active_count()
    for _ in range(5):
        for _ in loader:
            break  # the generator is closed here, as when a training step raises
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before



# --- upstream ImageNet through FFCV (`data convert --task imagenet`, `upstream --loader ffcv`) ------------------


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory) -> Path:
    """ImageNet's layout in miniature: train/<wnid>/*.JPEG (4 classes x 12) and val/<wnid>/*.JPEG (4 x 3)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("val", 3)):
        for c in range(4):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                learnable_image(c, i, rng).resize((40, 40)).save(folder / f"{c}_{i}.JPEG", quality=95)
    return root


def _imagenet_recipe(path: Path) -> Path:
    from transferbench.upstream import load_recipe

    recipe = load_recipe("small_cpu")
    recipe.update(name="ffcv", dataset="imagenet", image_size=32, batch_size=8, epochs=2)
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def test_imagenet_converts_and_the_ffcv_batches_follow_the_rank_order(need_ffcv, imagenet_folder, ffcv_dir):
    from transferbench.fastdata.convert import imagenet_splits
    from transferbench.upstream.data import FFCVTrainBatches, rank_order, train_transform
    from transferbench.upstream.distributed import World

    assert main(["data", "convert", "--task", "imagenet", "--data-root", str(imagenet_folder)]) == 0
    assert sorted(p.name for p in (ffcv_dir / "imagenet").glob("*.beton")) == ["train_r512_q90.beton",
                                                                             "val_r512_q90.beton"]
    train = imagenet_splits(imagenet_folder)["train"]
    cfg = train_transform({"image_size": 32})
    for rank in (0, 1):  # each rank of two reads its half of every global batch of 8, in step order
        world = World(rank=rank, size=2)
        batches = FFCVTrainBatches(imagenet_folder, train, cfg, 8, world, seed=3, workers=1, device=torch.device("cpu"))
        batches.set_epoch(1)
        labels = [int(y) for _, y in batches for y in y]
        expected = [train.labels[i] for i in rank_order(len(train), 8, world, seed=3, epoch=1)]
        assert len(batches) == 6 and labels == expected
        assert len(set(expected)) > 1  # the order is not trivially one class


def test_upstream_trains_from_ffcv_and_records_the_loader(need_ffcv, imagenet_folder, ffcv_dir, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    assert main(["data", "convert", "--task", "imagenet", "--data-root", str(imagenet_folder)]) == 0
    recipe = _imagenet_recipe(tmp_path / "ffcv.yaml")
    args = ["upstream", "--method", "gmp", "--sparsity", "0.5", "--recipe", str(recipe), "--data-root",
            str(imagenet_folder), "--device", "cpu"]
    assert main([*args, "--loader", "ffcv"]) == 0
    [path] = (tmp_path / "ckpts" / "upstream").glob("*.pth")
    training = torch.load(path, weights_only=True)["metadata"]["training"]
    assert training["loop"]["loader"] == "ffcv" and len(training["epoch_losses"]) == 2


def test_upstream_ffcv_errors_are_one_line(need_ffcv, imagenet_folder, ffcv_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    recipe = _imagenet_recipe(tmp_path / "ffcv.yaml")
    args = ["upstream", "--method", "dense", "--recipe", str(recipe), "--device", "cpu", "--loader", "ffcv"]
    assert main([*args, "--dataset", "shapes"]) == 2  # no .beton for the procedural set
    assert "--loader ffcv reads ImageNet's .beton files" in capsys.readouterr().err
    assert main([*args, "--data-root", str(imagenet_folder)]) == 2  # not converted yet
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "transferbench data convert --task imagenet" in err
    assert not (tmp_path / "ckpts").exists() or not list((tmp_path / "ckpts").rglob("*.pth"))


def test_pixels_moved_by_ffcv_and_normalised_by_lookup_equal_the_host_pipeline(need_ffcv, tmp_path, ffcv_dir):
    """The GPU path (uint8 crops ToDevice'd by FFCV, normalised there by table lookup) gives the host pipeline's floats
    bit for bit; run here with the CPU as the pixels' device (the same code, which a GPU merely runs elsewhere)."""
    from transferbench.fastdata.ffcv_loader import FFCVBatches, _pipelines, normalization_site, open_split

    data = tmp_path / "data"
    write_task("cifar10", data, "folders", train_per_class=1, test_per_class=5, image_fn=_smooth_image)
    assert main(["data", "convert", "--task", "cifar10", "--data-root", str(data), "--splits", "test"]) == 0
    task = get_task("cifar10")
    cfg = protocol_transform(task, "full", train=False, image_size=32)
    split = open_split(task, load_split(task, "test", data), "test", data, cfg)
    host = _read_all(FFCVBatches(split.path, cfg, 8, 1))
    moved = FFCVBatches(split.path, cfg, 8, 1, pixels_to=torch.device("cpu"))
    assert moved.table is not None  # the lookup path, not the host pipeline
    assert [type(op).__name__ for op in _pipelines(cfg, torch.device("cpu"))["image"][1:]] == \
        ["ToTensor", "ToDevice", "ToTorchImage"]  # no float work on the host
    on_device = _read_all(moved)
    assert on_device[0].dtype == torch.float32 and torch.equal(on_device[0], host[0])
    assert torch.equal(on_device[1], host[1])
    assert normalization_site(torch.device("cuda:1")) == "lookup on the GPU"
    assert normalization_site(torch.device("cpu")) == "on the host"
