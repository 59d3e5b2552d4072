"""A tiny sweep on real-format fixtures: cifar10 (ImageFolder layout, 16 px) and two resnet_tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import yaml
from fixtures_data import learnable_image, write_task
from fixtures_models import write_pruned_checkpoint

from transferbench.upstream import load_recipe


def write_tiny_recipe(root: Path) -> Path:
    """small_cpu at a few seconds of training (256 images, 2 epochs), written as ``root/tiny.yaml`` for the
    upstream entries of a sweep."""
    recipe = load_recipe("small_cpu")
    recipe.update(name="tiny", train_size=256, test_size=64, batch_size=64, epochs=2)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_fixture_sweep(root: Path, *, linear_seeds=(21, 51), full_seeds=(21,), full_epochs: int = 3,
                        linear_epochs: int = 20, solvers=("sgd",), tasks=("cifar10",)) -> tuple[Path, Path]:
    """Write data, checkpoints and ``sweep.yaml`` under ``root``; returns (sweep file, data root)."""
    data = root / "data"
    if "cifar10" in tasks and not (data / "cifar10").exists():
        write_task("cifar10", data, "folders", train_per_class=12, test_per_class=6, image_size=16,
                   image_fn=learnable_image)
    checkpoints = []
    for method, sparsity in (("dense", 0.0), ("magnitude", 0.5)):
        path = root / f"tiny_{method}.pth"
        if not path.exists():
            write_pruned_checkpoint(path, sparsity=sparsity, seed=1)
        checkpoints.append({"method": method, "sparsity": sparsity, "path": str(path), "arch": "resnet_tiny"})
    modes = [m for m, seeds in (("linear", linear_seeds), ("full", full_seeds)) if seeds]
    spec = {
        "name": "fixture",
        "checkpoints": checkpoints,
        "tasks": list(tasks),
        "modes": modes,
        "seeds": {m: list(linear_seeds if m == "linear" else full_seeds) for m in modes},
        "solvers": list(solvers),
        "overrides": {"linear": {"epochs": linear_epochs, "lr": 0.1, "image_size": 32},
                      "full": {"epochs": full_epochs, "image_size": 32, "batch_size": 32}},
        "data_root": str(data),
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, data


def write_upstream_sweep(root: Path, **entry) -> Path:
    """The fixture sweep (cifar10, linear seed 21) with its dense file and a magnitude 50% checkpoint made by an
    upstream entry of the tiny recipe (``entry`` adds to it)."""
    sweep_file, _ = write_fixture_sweep(root, linear_seeds=(21,), full_seeds=())
    spec = yaml.safe_load(sweep_file.read_text())
    spec["upstream"] = [{"method": "magnitude", "sparsity": "50%", "recipe": str(write_tiny_recipe(root)), **entry}]
    spec["checkpoints"] = [spec["checkpoints"][0], {"method": "magnitude", "sparsity": "50%"}]
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return sweep_file
