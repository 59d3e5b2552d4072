"""Trains upstream runs of several methods in one job, for the data-parallel equivalence test.

    python tests/upstream_ddp_driver.py RECIPE OUT.json METHOD[:per-gpu-bn] ...            # one process
    torchrun --nproc_per_node 2 tests/upstream_ddp_driver.py RECIPE OUT.json METHOD ...     # two processes

Every run is in float64 with BatchNorm over the global batch (unless ``:per-gpu-bn``); rank 0 writes
{"METHOD": [checkpoint paths]} to OUT.json. ``DDP_DRIVER_LOG=tensorboard`` passes ``--log tensorboard``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transferbench.upstream import LoopOptions, train_upstream

SPARSITIES = {"dense": [0.0], "cram": [0.5, 0.9], "cram_nm": [0.5]}


def main(recipe: str, out: str, runs: list[str]) -> None:
    paths = {}
    for run in runs:
        method, _, variant = run.partition(":")
        options = LoopOptions(precision="fp64", sync_bn=variant != "per-gpu-bn")
        results = train_upstream(method, SPARSITIES.get(method, [0.8]), recipe=recipe, device="cpu", options=options,
                                 force=True, trackers=[t for t in os.environ.get("DDP_DRIVER_LOG", "").split(",") if t],
                                 out_dir=Path(out).parent / f"{Path(out).stem}-{method}-{variant}")
        paths[run] = [str(r.path) for r in results]
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump(paths, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
