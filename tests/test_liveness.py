"""Liveness from the lock, `run` claiming its key, records that never claim a stale digest or leave orphans, and a
store judged the same way (and without a traceback) however odd its files are. Real processes and real flock."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures_models import write_pruned_checkpoint
from fixtures_sweep import write_fixture_sweep

import transferbench.store as store
from transferbench import digests, runner
from transferbench.cli import main
from transferbench.context import RunContext
from transferbench.dispatch import load_sweep, plan_sweep
from transferbench.errors import TransferbenchError
from transferbench.report.collect import collect
from transferbench.resolve import resolve_spec
from transferbench.store import (
    DONE,
    FAILED,
    LOST,
    RUNNING,
    Metrics,
    RunRecord,
    claim_path,
    claim_runs,
    existing_record,
    lock_held,
    read_record,
    record_dir,
    result_path,
    run_states,
)
from transferbench.store.layout import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from transferbench.store import claim_runs
with claim_runs([sys.argv[2]], Path(sys.argv[1]), job_id="4242") as held:
    print("held" if held else "taken", flush=True)
    time.sleep(120)
"""


def _child(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, **kwargs)


def _hold(out: Path, key: str) -> subprocess.Popen:
    holder = _child("-c", HOLD, str(out), key)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _kill_tree(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --- liveness from the lock -----------------------------------------------------------------------------------

def test_a_killed_holder_is_not_running_and_a_sweep_runs_its_run_again(tmp_path, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=(), linear_epochs=2)
    out = tmp_path / "out"
    keys = sorted(s.run_key for s in plan_sweep(load_sweep(sweep_file), out).specs)
    holder = _hold(out, keys[0])
    try:
        # alive: running whatever the heartbeat says (a lock held on this host is the proof)
        old = time.time() - 3600
        os.utime(claim_path(out, keys[0]), (old, old))
        assert run_states(out, keys)[keys[0]].state == RUNNING
        os.utime(claim_path(out, keys[0]))
        assert run_states(out, keys)[keys[0]].detail.startswith("claimed by job 4242 on ")
    finally:
        _kill_tree(holder)
    # kill -9 leaves the claim file with a fresh heartbeat; its lock is free
    assert claim_path(out, keys[0]).exists() and time.time() - claim_path(out, keys[0]).stat().st_mtime < 60
    assert lock_held(out, keys[0]) is False
    state = run_states(out, keys)[keys[0]]
    assert state.state == LOST and state.detail.startswith("job 4242 is gone (killed or crashed): its lock is free")
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert [(t["running"], t["lost"], t["missing"]) for t in totals] == [(0, 1, 1)]
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]) == 0
    assert all(existing_record(out, k) is not None for k in keys)
    assert {s.state for s in run_states(out, keys).values()} == {DONE}


def test_an_upstream_unit_held_by_a_killed_job_is_taken_by_the_next(tmp_path):
    from transferbench.dispatch.stages import _held_elsewhere

    holder = _hold(tmp_path, "unit")
    try:
        assert _held_elsewhere(tmp_path, "unit", job_id="5") == "4242"
        assert _held_elsewhere(tmp_path, "unit", job_id="4242") == ""  # the holder's own other processes
    finally:
        _kill_tree(holder)
    assert claim_path(tmp_path, "unit").exists() and _held_elsewhere(tmp_path, "unit", job_id="5") == ""


def test_another_hosts_claim_is_judged_by_its_heartbeat(tmp_path):
    """flock cannot be tested across hosts (node-local locks on Lustre and some NFS mounts): the clock decides."""
    path = claim_path(tmp_path, "k")
    path.parent.mkdir(parents=True)
    (path.parent / LOCK_FILE).touch()  # free here, which says nothing about the other host
    path.write_text(json.dumps({"job_id": "7", "host": f"not-{socket.gethostname()}"}))
    assert run_states(tmp_path, ["k"])["k"].state == RUNNING
    os.utime(path, (time.time() - 3600,) * 2)
    state = run_states(tmp_path, ["k"])["k"]
    assert state.state == LOST and state.detail.startswith("job 7 stopped sending heartbeats 60 min ago")


def test_testing_a_lock_never_makes_a_claimer_skip_its_run(tmp_path):
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            lock_held(tmp_path, "k")

    (tmp_path / "work" / "k").mkdir(parents=True)
    (tmp_path / "work" / "k" / LOCK_FILE).touch()
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for i in range(50):
            with claim_runs(["k"], tmp_path, job_id=str(i)) as held:
                assert held == ["k"]
    finally:
        stop.set()
        prober.join()


def test_a_waiting_claimer_gets_the_run_once_the_holder_is_killed(tmp_path):
    holder = _hold(tmp_path, "k")
    waited: list[dict] = []
    killer = threading.Timer(0.5, _kill_tree, [holder])
    killer.start()
    with claim_runs(["k"], tmp_path, job_id="me", wait=lambda key, claim: waited.append(claim)) as held:
        assert held == ["k"] and json.loads(claim_path(tmp_path, "k").read_text())["job_id"] == "me"
    killer.join()
    assert [w["job_id"] for w in waited] == ["4242"]
    assert not claim_path(tmp_path, "k").exists()


# --- `run` claims its key ------------------------------------------------------------------------------------

COUNTED_RUN = """
import sys, time
from pathlib import Path
import transferbench.runner as runner
counter, release = Path(sys.argv[1]), Path(sys.argv[2])
train = runner._train_heads
def counted(*args, **kwargs):
    with open(counter, "a") as f:
        f.write("trained\\n")
    deadline = time.time() + 60
    while not release.exists() and time.time() < deadline:  # hold the run until the test lets go
        time.sleep(0.05)
    return train(*args, **kwargs)
runner._train_heads = counted
from transferbench.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("liveness") / "tiny_50.pth"
    write_pruned_checkpoint(path, sparsity=0.5)
    return path


def _run_args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--task", "digits", "--checkpoint", str(checkpoint), "--sparsity", "0.5", "--results", str(out),
            "--limit", "64", "--epochs", "2", "--workers", "0", *extra]


def test_two_identical_runs_at_once_train_once_and_print_the_same_record(tmp_path, checkpoint):
    out, counter, release = tmp_path / "out", tmp_path / "trained.txt", tmp_path / "release"
    first = _child("-c", COUNTED_RUN, str(counter), str(release), *_run_args(checkpoint, out))
    deadline = time.time() + 120
    while not counter.exists():  # the first holds the claim and is training
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = _child("-c", COUNTED_RUN, str(counter), str(release), *_run_args(checkpoint, out))
    note = second.stdout.readline()
    release.touch()
    first_out, _ = first.communicate(timeout=120)
    second_out, _ = second.communicate(timeout=120)
    assert first.returncode == second.returncode == 0
    assert counter.read_text() == "trained\n"  # exactly one training
    assert note.startswith("note: digits.") and f"is being run by job run-{first.pid} on " in note
    assert first_out.splitlines()[-2:] == second_out.splitlines()[-2:]  # the same top-1 line and record path
    (record,) = (out / "runs").glob("*/result.json")
    assert f"record: {record}" in second_out
    assert not (out / "work").exists() or not list((out / "work").iterdir())  # no claim or lock left behind


# --- a record never claims a stale digest, and a failed write leaves nothing ----------------------------------

def _spec(checkpoint: Path, **overrides):
    return resolve_spec("digits", "linear", 21, sparsity=0.5, checkpoint=checkpoint,
                        overrides={"limit": 64, "epochs": 2, **overrides})


def _flip_a_byte_in_place(path: Path) -> None:
    """Change the file's content, keeping its inode, size and mtime (an in-place edit that restores the time)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_checkpoint_changed_during_the_run_gets_no_record(tmp_path, checkpoint, monkeypatch):
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(checkpoint.read_bytes())
    monkeypatch.setattr(digests, "RACY_S", 0.05)
    time.sleep(0.1)  # old enough for its digest to be remembered: only ctime can tell the edit below
    digests.clear_memo()
    spec = _spec(ckpt)
    train = runner._train_heads

    def edit_during_training(*args, **kwargs):
        _flip_a_byte_in_place(ckpt)
        return train(*args, **kwargs)

    monkeypatch.setattr(runner, "_train_heads", edit_during_training)
    ctx = RunContext(results=tmp_path / "out", num_workers=0)
    with pytest.raises(TransferbenchError, match=r"^checkpoint .*ckpt\.pth changed during the run \(sha256 "):
        runner.run_claimed(spec, ctx)
    assert not record_dir(ctx.results, spec.run_key).exists()
    assert not list(ctx.feature_cache().glob("*.pt"))  # features of bytes the digest is not of are not kept


@pytest.mark.parametrize("force", [False, True])
def test_a_full_disk_at_the_record_leaves_no_predictions_and_no_older_record(tmp_path, checkpoint, monkeypatch,
                                                                            force):
    spec, ctx = _spec(checkpoint), RunContext(results=tmp_path / "out", num_workers=0, force=force)
    if force:  # an older complete record, whose predictions the failed run replaces
        runner.run_claimed(spec, RunContext(results=ctx.results, num_workers=0))
        assert existing_record(ctx.results, spec.run_key) is not None
    write_json = store.write_json

    def disk_full(path, obj):
        if Path(path).name == "result.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_json(path, obj)

    monkeypatch.setattr(store, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        runner.run_claimed(spec, ctx)
    assert not record_dir(ctx.results, spec.run_key).exists()  # neither predictions nor a record that lost them
    assert not [p for p in ctx.results.rglob("*") if p.name.endswith(".tmp")]
    assert run_states(ctx.results, [spec.run_key])[spec.run_key].state == "missing"


# --- one judgement of a record, and no traceback on odd files -------------------------------------------------

def _record_json(**change) -> dict:
    record = RunRecord("k", "digits", "dense", "resnet_tiny", "linear", 21, 0.0, Metrics(0.5, 0.5, "top1", 0.5),
                       timings={"total_s": 3.0, "training_s": 1.0}).to_json()
    for path, value in change.items():
        *parents, leaf = path.split("__")
        node = record
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return record


@pytest.mark.parametrize(("text", "reason"), [
    (json.dumps(_record_json(metrics__top1=1.7)), "bad value: top1 1.7 is not a fraction"),
    (json.dumps(_record_json(metrics__top1=float("nan"))), "unreadable JSON: "),
    (json.dumps(_record_json(metrics__primary=float("inf"))), "unreadable JSON: "),
    (json.dumps(_record_json(timings__total_s=-4.0)), "bad value: timings.total_s -4.0 is not a duration"),
    (json.dumps(_record_json(timings__training_s="soon")), "bad value: timings.training_s 'soon' is not a dur"),
    (json.dumps(_record_json(metrics__best_top1=2)), "bad value: best_top1 2 is not a fraction"),
    (json.dumps({**_record_json(schema_version=0), "top1": 170.0, "metrics": {}}),
     "bad value: top1 1.7 is not a fraction"),  # a legacy record in percent, past 100 %
])
def test_run_status_and_collect_judge_an_impossible_record_alike(tmp_path, text, reason):
    path = result_path(tmp_path, "k")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert read_record(path) is None and existing_record(tmp_path, "k") is None  # `run` runs it again
    state = run_states(tmp_path, ["k"])["k"]
    assert state.state == FAILED and state.detail.startswith(reason)
    collection = collect(tmp_path)
    assert collection.runs.empty
    assert collection.failed[["run_key", "state", "reason"]].values.tolist() == [["k", FAILED, state.reason]]
    path.write_text(json.dumps(_record_json()))  # the reference: the same record with possible values is done
    assert existing_record(tmp_path, "k") is not None and run_states(tmp_path, ["k"])["k"].state == DONE
    assert len(collect(tmp_path).runs) == 1


ODD_LEDGER_LINES = [b"", b"   ", b'{"run_keys": ["k_ledger"], "job_', b"[1, 2]", b'"text"', b"17", b"null",
                    b'{"run_keys": "k_ledger"}', b'{"run_keys": [1, null, {"a": 1}]}', b"\xff\xfe{\x80 not utf-8",
                    b'{"run_keys": ["k_ledger"], "executor": "local", "stdout": 5, "stderr": ["x"]}']


def test_odd_store_files_are_reasons_not_tracebacks(tmp_path, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=(), linear_epochs=2)
    out = tmp_path / "out"
    listed, directory = sorted(s.run_key for s in plan_sweep(load_sweep(sweep_file), out).specs)
    result_path(out, listed).parent.mkdir(parents=True)
    result_path(out, listed).write_text("[1, 2]")
    result_path(out, directory).mkdir(parents=True)
    (out / "jobs").mkdir()
    (out / "jobs" / "ledger.jsonl").write_bytes(b"\n".join(ODD_LEDGER_LINES) + b"\n")
    for odd in ("failures/k_failure.json", "work/k_claim/claim.json"):
        (out / odd).parent.mkdir(parents=True)
        (out / odd).write_bytes(b"[\xff]")
    os.utime(out / "work" / "k_claim" / "claim.json", (time.time() - 3600,) * 2)
    states = run_states(out, [listed, directory, "k_failure", "k_claim", "k_ledger"])
    assert states[listed].state == FAILED and states[listed].reason == "failed: not a JSON object but list"
    assert states[directory].state == FAILED
    assert states[directory].reason == "failed: result.json is a directory, not a record"
    assert states["k_failure"].reason == "failed: unreadable failure file"
    assert states["k_claim"].state == LOST  # a claim without a readable holder, no lock: its heartbeat decides
    assert states["k_ledger"].state == LOST  # the one whole submission: a local job without a pid, not alive
    assert main(["status", str(sweep_file), "--results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"  {listed}: not a JSON object but list" in printed or "not a JSON object but list" in printed
    assert "result.json is a directory, not a record" in printed
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    runs = {r["run_key"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert {runs[listed]["state"], runs[directory]["state"]} == {FAILED}
