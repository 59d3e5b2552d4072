"""collect: the sweep dispatcher's failures and claims, empty folders, stores without runs/, units per record."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import pytest

from transferbench.errors import TransferbenchError
from transferbench.report import collect

collect_module = importlib.import_module("transferbench.report.collect")  # the package exports the function


def _record(key: str, **changes) -> dict:
    rec = {"schema_version": 1, "run_key": key, "status": "completed", "task": "cifar10", "method": "acdc",
           "arch": "resnet50", "mode": "linear", "seed": 0, "target_sparsity": 0.9,
           "checkpoint": {"upstream_top1": 75.03}, "metrics": {"top1": 0.8, "mean_per_class_acc": 0.79,
                                                              "primary_metric": "top1", "primary": 0.8}}
    rec.update(changes)
    return rec


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _claim(root: Path, key: str, age_s: float, now: float) -> None:
    path = _write(root / "work" / key / "claim.json", {"job_id": "123_4", "host": "node7", "pid": 1})
    (root / "work" / key / ".lock").write_bytes(b"")
    os.utime(path, (now - age_s, now - age_s))


def _by_key(coll) -> dict[str, tuple[str, str]]:
    return {r.run_key: (r.state, r.reason) for r in coll.failed.itertuples()}


def test_failures_running_and_crashed_runs(tmp_path):
    now = time.time()
    root = tmp_path / "results"
    _write(root / "runs" / "done" / "result.json", _record("done"))
    # a failure file written by a sweep job, in the store's format (store/claims.py)
    _write(root / "failures" / "boom.json", {"run_key": "boom", "error": "RuntimeError: CUDA out of memory",
                                             "job_id": "77_1", "host": "n1", "failed_at": "2026-01-01T00:00:00+00:00",
                                             "traceback": "Traceback ...\nRuntimeError: CUDA out of memory\n"})
    (root / "failures" / "torn.json").write_text("{")
    # an old failure of a run that completed later is not a failure any more
    _write(root / "failures" / "done.json", {"run_key": "done", "error": "ValueError: old"})
    _claim(root, "live", age_s=30, now=now)
    _claim(root, "killed", age_s=3600, now=now)
    (root / "work" / "killed" / "train_state.pt").write_bytes(b"x")
    (root / "runs" / "empty").mkdir()
    # a `transferbench run` of full fine-tuning, outside any sweep: training state, no claim
    (root / "work" / "by_hand").mkdir(parents=True)
    (root / "work" / "by_hand" / "train_state.pt").write_bytes(b"x")
    # a lock alone (a run between two jobs) and a completed linear probe's folder are not reported
    (root / "work" / "between").mkdir()
    (root / "work" / "between" / ".lock").write_bytes(b"")
    (root / "work" / "done").mkdir()
    (root / "work" / "done" / ".lock").write_bytes(b"")
    coll = collect(root, now=now)
    got = _by_key(coll)
    assert set(got) == {"boom", "torn", "live", "killed", "empty", "by_hand"}
    assert got["by_hand"] == ("unfinished", "unfinished: no record; work/ holds train_state.pt; no sweep job claims "
                                            "it (a `transferbench run` still going, or interrupted: the same command "
                                            "resumes it)")
    assert got["boom"] == ("failed", "failed: RuntimeError: CUDA out of memory (job 77_1)")
    assert got["torn"] == ("failed", "failed: unreadable failure file")
    assert got["live"][0] == "running" and got["live"][1].startswith("running: claimed by job 123_4 on node7")
    assert got["killed"] == ("lost", "lost: job 123_4 stopped sending heartbeats 60 min ago; work/ holds "
                                     "train_state.pt")
    assert got["empty"][0] == "lost" and got["empty"][1].startswith("lost: empty: a run folder with no files")
    assert coll.n_completed == 1 and coll.n_running == 1 and coll.n_unfinished == 1 and coll.n_failed == 4
    assert coll.summary().startswith("1 completed run(s), 4 failed or lost, 1 running, 1 unfinished in ")


def test_a_fresh_claim_overrides_an_older_failure(tmp_path):
    now = time.time()
    root = tmp_path / "results"
    _write(root / "failures" / "k.json", {"run_key": "k", "error": "ValueError: bad"})
    _claim(root, "k", age_s=5, now=now)
    assert _by_key(collect(root, now=now))["k"][0] == "running"
    assert _by_key(collect(root, now=now + 3600))["k"] == ("failed", "failed: ValueError: bad")


def test_store_without_runs_folder(tmp_path):
    root = tmp_path / "store"
    for name in ("work", "failures", "jobs", "leaderboards", "figures", "report"):
        (root / name).mkdir(parents=True)
    (root / "jobs" / "ledger.jsonl").write_text("")
    _write(root / "failures" / "k.json", {"run_key": "k", "error": "ValueError: bad"})
    coll = collect(root)
    assert coll.n_completed == 0 and list(coll.failed["run_key"]) == ["k"]  # no store folder taken for a run

    flat = tmp_path / "flat"  # run folders directly in the root
    _write(flat / "a" / "result.json", _record("a"))
    (flat / "b").mkdir()
    (flat / "leaderboards").mkdir()
    coll = collect(flat)
    assert list(coll.runs["run_key"]) == ["a"] and list(coll.failed["run_key"]) == ["b"]

    (tmp_path / "other" / "something").mkdir(parents=True)
    with pytest.raises(TransferbenchError, match=r"no runs/ folder and no run records in .*other \(--results\)"):
        collect(tmp_path / "other")


def test_unreadable_runs_folder_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "r" / "runs").mkdir(parents=True)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(collect_module.os, "scandir", denied)  # chmod would not stop root, who runs CI here
    with pytest.raises(TransferbenchError, match=r"cannot read the run folder .* \(--results\): Permission denied"):
        collect(tmp_path / "r")


def test_units_are_decided_per_record(tmp_path):
    root = tmp_path / "results"
    # an unversioned record in percent whose mean per-class accuracy is below 1 %: still a percentage
    _write(root / "runs" / "old" / "result.json",
           {"status": "completed", "task": "cifar10", "method": "acdc", "arch": "resnet50", "mode": "linear",
            "seed": 0, "target_sparsity": 90, "sparsity": 89.7, "top1": 2.0, "mean_per_class_acc": 0.8,
            "checkpoint": {"upstream_top1": 76.13}})
    # a versioned record holds fractions; a percentage there is an error, not silently rescaled
    _write(root / "runs" / "bad" / "result.json", _record("bad", metrics={"top1": 80.0, "primary": 80.0}))
    _write(root / "runs" / "good" / "result.json", _record("good"))
    coll = collect(root)
    runs = coll.runs.set_index("run_key")
    assert runs.loc["old", "top1"] == pytest.approx(0.02)
    assert runs.loc["old", "mean_per_class_acc"] == pytest.approx(0.008)
    assert runs.loc["old", "target_sparsity"] == pytest.approx(0.9)
    assert runs.loc["old", "measured_sparsity"] == pytest.approx(0.897)
    assert runs.loc["old", "upstream_top1"] == pytest.approx(0.7613)  # the registry's percent, unversioned too
    assert runs.loc["good", "upstream_top1"] == pytest.approx(0.7503)  # the registry's percent, as a fraction
    assert _by_key(coll)["bad"] == ("failed", "failed: bad value: top1 80 is not a fraction, as schema_version 1 "
                                              "records store accuracies")
