"""Many jobs writing to one results root at once: no record, ledger line or failure is lost or corrupted,
and a run is executed by at most one job at a time."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_records import write_completed

from transferbench.context import RunContext, package_versions
from transferbench.dispatch import jobs as jobs_module
from transferbench.dispatch.plan import WorkUnit
from transferbench.runspec import CheckpointRef, make_spec
from transferbench.store import (
    append_ledger,
    claim_runs,
    existing_record,
    failure_path,
    read_ledger,
    read_record,
    write_failure,
)

WRITERS = 12
KEYS_PER_WRITER = 40
SHARED = 10  # keys every writer also writes (duplicated jobs after a double submission)


def _spec(index: int):
    ref = CheckpointRef("magnitude", 0.5, "resnet_tiny", f"sha256:{index:064x}")
    return make_spec("digits", "linear", 21, ref, {"epochs": 1})


def _writer(out: str, worker: int, barrier) -> None:
    rng = np.random.default_rng(worker)
    barrier.wait()  # all start together, to maximise overlap
    for i in range(KEYS_PER_WRITER):
        index = worker * KEYS_PER_WRITER + i
        spec = _spec(index)
        logits = rng.normal(size=(64, 10)).astype(np.float32)
        write_completed(out, spec, index, logits, "x" * 20_000)
        append_ledger(Path(out), [{"run_keys": [spec.run_key], "job_id": f"{worker}_{i}", "executor": "slurm",
                                   "submitted_at": "2026-01-01T00:00:00+00:00", "pad": "y" * 5000}])
        write_failure(Path(out), f"failed-{index}", ValueError(f"boom {index}"), f"{worker}")
        if i < SHARED:
            shared = _spec(10_000 + i)
            write_completed(out, shared, worker, logits, "z" * 20_000)


def test_parallel_writers_lose_and_corrupt_nothing(tmp_path):
    package_versions()  # imports sklearn/scipy once here, not in each forked writer
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    total = WRITERS * KEYS_PER_WRITER
    for index in range(total):
        record = existing_record(tmp_path, _spec(index).run_key)
        assert record is not None and record.metrics.extra["tag"] == index
        npz = np.load(_spec(index).record_dir(tmp_path) / "predictions.npz")
        assert npz["logits"].shape == (64, 10)
    for i in range(SHARED):  # written by every writer: one complete record from one of them
        record = read_record(_spec(10_000 + i).record_dir(tmp_path) / "result.json")
        assert record is not None and record.metrics.extra["tag"] in range(WRITERS)
    assert len(list((tmp_path / "runs").iterdir())) == total + SHARED
    assert not list(tmp_path.rglob("*.tmp"))  # no temp file left behind

    lines = (tmp_path / "jobs" / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == total and all(json.loads(line)["pad"] == "y" * 5000 for line in lines)
    assert len(read_ledger(tmp_path)) == total
    for index in range(total):
        assert json.loads(failure_path(tmp_path, f"failed-{index}").read_text())["error"] == f"ValueError: boom {index}"


def _claimer(out: str, keys: list[str], barrier, results) -> None:
    barrier.wait()
    with claim_runs(keys, Path(out), job_id=mp.current_process().name) as claimed:
        results.put(claimed)
        time.sleep(0.5)  # hold the claims while the others try


@pytest.mark.parametrize("contenders", [8])
def test_a_run_is_claimed_by_exactly_one_job(tmp_path, contenders):
    ctx = mp.get_context("fork")
    keys = [f"run-{i}" for i in range(5)]
    barrier, results = ctx.Barrier(contenders), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path), keys, barrier, results)) for _ in range(contenders)]
    for p in procs:
        p.start()
    claimed = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    won = [key for keys_won in claimed for key in keys_won]
    assert sorted(won) == sorted(keys)  # every run claimed, none twice
    assert not list(tmp_path.rglob("claim.json"))  # released on exit
    with claim_runs(keys, tmp_path, job_id="later") as again:  # and claimable again afterwards
        assert again == keys


def test_a_run_finished_by_another_job_between_the_check_and_the_claim_is_not_run_again(tmp_path, monkeypatch):
    specs = (_spec(1), _spec(2))
    unit = WorkUnit("linear", specs)
    real_claim = jobs_module.claim_runs

    @contextlib.contextmanager
    def claim_after_the_other_job_finished(keys, out, job_id):
        # the other job completes spec 1 and releases its lock just after this job's check
        write_completed(out, specs[0], "other")
        with real_claim(keys, out, job_id) as claimed:
            assert sorted(claimed) == sorted(s.run_key for s in specs)  # the lock alone does not tell
            yield claimed

    ran: list[list[str]] = []
    monkeypatch.setattr(jobs_module, "claim_runs", claim_after_the_other_job_finished)
    monkeypatch.setattr(jobs_module, "run", lambda group, ctx: ran.append([s.run_key for s in group]))
    done = jobs_module.execute_unit(unit, RunContext(results=tmp_path, num_workers=0), job_id="this")
    assert ran == [[specs[1].run_key]] and done == [specs[1].run_key]
    assert existing_record(tmp_path, specs[0].run_key).metrics.extra["tag"] == "other"  # its record is left alone
