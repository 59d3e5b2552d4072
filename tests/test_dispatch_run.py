"""Sweeps that really run (debug and local executors): records, no-op reruns, failures, --retry-failed, status."""

from __future__ import annotations

import errno
import getpass
import json
import os
import re
import socket
import sys
import time

import pytest
import torch
import yaml
from fixtures_sweep import write_fixture_sweep, write_upstream_sweep

from transferbench.cli import main
from transferbench.dispatch import load_sweep, plan_sweep, run_states
from transferbench.dispatch.jobs import use_allocated_cpus
from transferbench.errors import TransferbenchError
from transferbench.store import (
    DONE,
    FAILED,
    LOST,
    MISSING,
    QUEUED,
    RUNNING,
    Metrics,
    RunRecord,
    append_ledger,
    claim_path,
    claim_runs,
    command_error_line,
    failure_path,
)
from transferbench.store import claims as state_module

pytestmark = pytest.mark.slow


def _block(printed: str, index_header: str) -> list[str]:
    """The rows of the status table whose index header is ``index_header`` (whitespace collapsed)."""
    lines = [" ".join(line.split()) for line in printed.splitlines()]
    start = lines.index(index_header)
    assert lines[start - 1] == "state done running queued unfinished failed lost missing"
    return lines[start + 1:lines.index("", start)]


def _records(out):
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}


def test_debug_sweep_runs_everything_once_and_a_second_sweep_is_a_noop(tmp_path, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21, 51), full_seeds=(21,))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]) == 0
    records = _records(out)
    plan = plan_sweep(load_sweep(sweep_file), out)
    assert set(records) == {s.run_key for s in plan.specs} and len(records) == 6
    assert all(r["status"] == "completed" for r in records.values())
    linear = [r for r in records.values() if r["mode"] == "linear"]
    assert {r["timings"]["group_size"] for r in linear} == {2}  # both seeds shared one extraction
    assert not list((out / "work").glob("*/claim.json"))  # claims are released
    capsys.readouterr()
    mtimes = {k: (out / "runs" / k / "result.json").stat().st_mtime_ns for k in records}
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert mtimes == {k: (out / "runs" / k / "result.json").stat().st_mtime_ns for k in records}


def test_sweep_passes_the_run_switches_to_every_job(tmp_path):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0",
                 "--cudnn-benchmark"]) == 0
    records = _records(out)
    assert records and all(r["config"]["cudnn_benchmark"] is True for r in records.values())
    assert all(r["config"]["compiled"] is False for r in records.values())
    # the debug executor runs the jobs in this process
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True


def test_a_failure_is_recorded_shown_by_status_and_retried_alone(tmp_path, capsys):
    sweep_file, data = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=(), tasks=("cifar10", "digits"))
    out = tmp_path / "out"
    plan = plan_sweep(load_sweep(sweep_file), out)
    broken = {s.run_key for s in plan.specs if s.task == "cifar10"}
    fine = {s.run_key for s in plan.specs if s.task == "digits"}
    assert len(broken) == len(fine) == 2
    image = sorted((data / "cifar10").rglob("*.jpg"))[0]
    original = image.read_bytes()
    image.write_bytes(b"not an image")  # data is not part of a run's key: the keys stay the same
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]) == 1
    printed = capsys.readouterr().out
    assert re.search(r"failed: cifar10\.dense0\.resnet_tiny\.linear: .*" + re.escape(image.name), printed)
    failures = {k: json.loads(failure_path(out, k).read_text()) for k in broken}
    for failure in failures.values():
        assert failure["job_id"] == "debug" and "\n" not in failure["error"] and "Traceback" in failure["traceback"]
    assert set(_records(out)) == fine

    assert main(["status", str(sweep_file), "--results", str(out)]) == 0
    status = capsys.readouterr().out
    for key, failure in failures.items():
        assert f"  {key} [job debug]: {failure['error']}" in status
    # grid, done, running, queued, unfinished, failed, lost, missing
    assert re.search(r"linear\s+4\s+2\s+0\s+0\s+0\s+2\s+0\s+0", status)
    # per method and sparsity, and per task: each checkpoint failed on cifar10 and finished digits
    assert _block(status, "mode method sparsity") == ["linear dense 0% 1 0 0 0 1 0 0",
                                                           "magnitude 50% 1 0 0 0 1 0 0"]
    assert _block(status, "mode task") == ["linear cifar10 0 0 0 0 2 0 0", "digits 2 0 0 0 0 0 0"]
    assert main(["status", str(sweep_file), "--results", str(out), "--failures", "1"]) == 0
    listed = capsys.readouterr().out.split("failed runs (2;", 1)[1].splitlines()[1:]
    assert len(listed) == 2 and listed[0].startswith("  cifar10.") and "[job debug]" in listed[0]
    assert listed[1] == "  ... and 1 more (--failures N shows more, --json all)"

    # a plain sweep does not resubmit failures; --retry-failed does, and only them
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    image.write_bytes(original)
    mtimes = {k: (out / "runs" / k / "result.json").stat().st_mtime_ns for k in fine}
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--retry-failed", "--results", str(out),
                 "--workers", "0"]) == 0
    assert "to retry: 2 run(s) in 2 job(s)" in capsys.readouterr().out
    assert mtimes == {k: (out / "runs" / k / "result.json").stat().st_mtime_ns for k in fine}
    assert set(_records(out)) == broken | fine
    assert not any(failure_path(out, k).exists() for k in broken)


def test_local_executor_runs_units_as_subprocesses(tmp_path, capsys):
    from submitit.core.utils import DelayedSubmission, JobPaths

    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21, 51), full_seeds=())
    out = tmp_path / "out"
    profile = tmp_path / "seven_requeues.yaml"  # not submitit's default of 3, so a lost setting shows
    profile.write_text(yaml.safe_dump({"gpus_per_node": 0, "cpus_per_task": 1, "max_requeues": 7, "time_min": 20}))
    assert main(["sweep", str(sweep_file), "--executor", "local", "--parallel", "2", "--workers", "0",
                 "--results", str(out), "--profile", str(profile)]) == 0
    records = _records(out)
    assert len(records) == 4
    assert {r["hardware"]["hostname"] for r in records.values()}
    ledger = [json.loads(line) for line in (out / "jobs" / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 2 and {e["executor"] for e in ledger} == {"local"}
    assert sorted(k for e in ledger for k in e["run_keys"]) == sorted(records)
    assert all(e["job_id"].isdigit() for e in ledger)  # LocalExecutor's job id is the pid
    assert {e["host"] for e in ledger} == {socket.gethostname()}  # where that pid means something
    for entry in ledger:  # the profile's max_requeues reached each job (local_max_num_timeout)
        pickle = JobPaths(out / "jobs" / "%j", job_id=entry["job_id"]).submitted_pickle
        assert DelayedSubmission.load(pickle)._timeout_countdown == 7
    assert not (out / "jobs" / "%j").exists()  # submitit's controller makes the pattern's folder; the sweep removes it


def _local_entry(out, keys: list[str], pid: int, host: str | None = None, ended: bool = False) -> dict:
    """A ledger line as `sweep --executor local` writes it; ``ended``: with submitit's result file."""
    folder = out / "jobs" / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    if ended:
        (folder / f"{pid}_0_result.pkl").write_bytes(b"")
    return {"run_keys": keys, "job_id": str(pid), "executor": "local", "stdout": str(folder / f"{pid}_0_log.out"),
            "stderr": str(folder / f"{pid}_0_log.err"), "submitted_at": "2026-06-01T00:00:00+00:00",
            **({"host": host} if host else {})}


def test_local_jobs_are_judged_by_submitits_result_file_and_on_their_host_only(tmp_path):
    out = tmp_path
    here, alive, reused, dead = socket.gethostname(), os.getpid(), os.getppid(), 999999999
    append_ledger(out, [
        _local_entry(out, ["ended_pid_reused"], reused, here, ended=True),  # its pid now belongs to another process
        _local_entry(out, ["running_here"], alive, here),
        _local_entry(out, ["gone_here"], dead, here),
        _local_entry(out, ["other_host"], dead - 1, "node7"),  # that pid is not this machine's to look up
        _local_entry(out, ["other_host_ended"], dead - 2, "node7", ended=True),
    ])
    notes: list[str] = []
    states = run_states(out, ["ended_pid_reused", "running_here", "gone_here", "other_host", "other_host_ended"],
                        notes=notes)
    assert {k: s.state for k, s in states.items()} == {
        "ended_pid_reused": LOST, "running_here": QUEUED, "gone_here": LOST, "other_host": QUEUED,
        "other_host_ended": LOST}
    assert states["ended_pid_reused"].detail == f"job {reused} ended without a record"
    assert states["running_here"].detail == f"job {alive}"
    assert states["other_host"].detail == f"job {dead - 1} (not confirmed: local job on node7)"
    assert len(notes) == 1 and notes[0].startswith(f"local jobs of {out / 'jobs' / 'ledger.jsonl'} run on node7, "
                                                   "not here")


def test_run_states_from_files(tmp_path):
    out = tmp_path
    keys = ["done", "incomplete", "running", "stale", "failed", "queued", "queued_after_failure", "gone", "never"]
    now = time.time()
    done = RunRecord("done", "digits", "dense", "resnet_tiny", "linear", 21, 0.0, Metrics(0.5, 0.5, "top1", 0.5))
    for key, record in (("done", done.to_json()), ("incomplete", {**done.to_json(), "status": "running"})):
        (out / "runs" / key).mkdir(parents=True)
        (out / "runs" / key / "result.json").write_text(json.dumps(record))
    for key, age in (("running", 5), ("stale", 3600)):
        path = claim_path(out, key)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"job_id": f"7_{key}", "host": "node1"}))
        os.utime(path, (now - age, now - age))
    for key in ("failed", "queued_after_failure"):
        failure_path(out, key).parent.mkdir(parents=True, exist_ok=True)
        failure_path(out, key).write_text(json.dumps({"error": "ValueError: boom", "job_id": "3",
                                                      "failed_at": "2026-01-01T00:00:00+00:00"}))
    log = tmp_path / "gone.err"
    log.write_text("starting\nslurmstepd: error: Detected 1 oom_kill event\n")
    append_ledger(out, [
        {"run_keys": ["queued", "queued_after_failure"], "job_id": str(os.getpid()), "executor": "local",
         "submitted_at": "2026-06-01T00:00:00+00:00"},
        {"run_keys": ["gone"], "job_id": "999999999", "executor": "local", "stderr": str(log),
         "submitted_at": "2026-06-01T00:00:00+00:00"},
    ])
    states = run_states(out, keys, now=now)
    assert {k: s.state for k, s in states.items()} == {
        "done": DONE, "incomplete": FAILED,  # done as jobs see it: a completed record; else the reason
        "running": RUNNING, "stale": LOST, "failed": FAILED, "queued": QUEUED,
        "queued_after_failure": QUEUED, "gone": LOST, "never": MISSING,
    }
    assert states["incomplete"].detail == "status 'running'"
    assert states["running"].detail.startswith("claimed by job 7_running on node1, heartbeat ")
    assert states["running"].job_id == "7_running"
    assert states["stale"].detail.startswith("job 7_stale stopped sending heartbeats 60 min ago")
    assert states["failed"].detail == "ValueError: boom"
    assert states["gone"].detail == ("job 999999999 ended without a record: slurmstepd: error: Detected 1 "
                                     "oom_kill event")
    assert states["never"].detail == ""


def test_a_torn_ledger_line_is_ignored(tmp_path):
    append_ledger(tmp_path, [{"run_keys": ["a"], "job_id": "1", "executor": "slurm",
                              "submitted_at": "2026-06-01T00:00:00+00:00"}])
    with open(tmp_path / "jobs" / "ledger.jsonl", "a") as f:
        f.write('{"run_keys": ["b"], "job_')
    from transferbench.store import read_ledger

    assert set(read_ledger(tmp_path)) == {"a"}


def _slurm_ledger(out, keys_by_job: dict[str, list[str]]) -> None:
    """Ledger lines as `sweep --executor slurm` writes them, with submitit's job folders."""
    entries = []
    for job_id, keys in keys_by_job.items():
        folder = out / "jobs" / job_id
        folder.mkdir(parents=True)
        entries.append({"run_keys": keys, "job_id": job_id, "executor": "slurm", "mode": "linear",
                        "stdout": str(folder / f"{job_id}_0_log.out"), "stderr": str(folder / f"{job_id}_0_log.err"),
                        "submitted_at": "2026-06-01T00:00:00+00:00"})
    append_ledger(out, entries)


def _path_with(tmp_path, monkeypatch, squeue: str | None):
    """PATH holding only a fake squeue (or nothing); it appends its arguments to `calls`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if squeue is not None:
        script = bin_dir / "squeue"
        script.write_text(f"#!{sys.executable}\nimport pathlib, sys\n"
                          f"with open({str(tmp_path / 'calls')!r}, 'a') as f: f.write(' '.join(sys.argv[1:]) + '\\n')\n"
                          + squeue)
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return tmp_path / "calls"


def test_without_squeue_status_says_so_and_submitits_result_file_ends_a_job(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _slurm_ledger(out, {"12_0": ["waiting"], "12_1": ["ended"]})
    (out / "jobs" / "12_1" / "12_1_0_result.pkl").write_bytes(b"")  # submitit: the job ended for good
    _path_with(tmp_path, monkeypatch, squeue=None)
    notes: list[str] = []
    states = run_states(out, ["waiting", "ended"], notes=notes)
    assert (states["waiting"].state, states["waiting"].detail) == (QUEUED, "job 12_0 (not confirmed: no squeue)")
    assert (states["ended"].state, states["ended"].detail) == (LOST, "job 12_1 ended without a record")
    assert len(notes) == 1 and notes[0].startswith(f"squeue is not on PATH: SLURM jobs of {out / 'jobs'}")


def test_a_failing_squeue_is_reported(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _slurm_ledger(out, {"12_0": ["waiting"]})
    _path_with(tmp_path, monkeypatch, squeue="print('squeue: warning: the -u format is deprecated', file=sys.stderr);"
                                             "print('slurm_load_jobs error: Unable to contact slurm controller', "
                                             "file=sys.stderr); print('', file=sys.stderr); sys.exit(1)")
    notes: list[str] = []
    assert run_states(out, ["waiting"], notes=notes)["waiting"].state == QUEUED
    assert notes[0].startswith("squeue failed (exit 1): slurm_load_jobs error: Unable to contact slurm controller: ")


@pytest.mark.parametrize(("stderr", "line"), [
    ("sbatch: warning: x is deprecated\nsbatch: error: Invalid account\n", "sbatch: error: Invalid account"),
    ("sbatch: error: QOS limit\nsbatch: see the site's page\n\n", "sbatch: error: QOS limit"),
    ("Error: no partition\n", "Error: no partition"),
    ("first\nsecond, without the word\n  \n", "second, without the word"),
    (" \n", "the default"),
])
def test_the_line_of_a_commands_stderr_that_says_why(stderr, line):
    assert command_error_line(stderr, "the default") == line


def test_squeue_is_asked_for_this_users_jobs_only(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _slurm_ledger(out, {"12_0": ["waiting"], "12_1": ["gone"], "13": ["whole_array_listed"]})
    calls = _path_with(tmp_path, monkeypatch, squeue="print('12_0\\n13\\n99_4')")
    notes: list[str] = []
    states = run_states(out, ["waiting", "gone", "whole_array_listed"], notes=notes)
    assert {k: s.state for k, s in states.items()} == {"waiting": QUEUED, "gone": LOST,
                                                      "whole_array_listed": QUEUED}
    assert states["waiting"].detail == "job 12_0" and notes == []
    assert calls.read_text().split() == ["-h", "-r", "-u", getpass.getuser(), "-o", "%i"]


def test_status_prints_the_squeue_note(tmp_path, monkeypatch, capsys):
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    out = tmp_path / "out"
    keys = [s.run_key for s in plan_sweep(load_sweep(sweep_file), out).specs]
    _slurm_ledger(out, {"12_0": keys})
    _path_with(tmp_path, monkeypatch, squeue=None)
    assert main(["status", str(sweep_file), "--results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: squeue is not on PATH: SLURM jobs of" in printed
    assert re.search(r"linear\s+2\s+0\s+0\s+2\s+0\s+0\s+0\s+0", printed)


@pytest.fixture
def no_flock(monkeypatch):
    def flock(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(state_module.fcntl, "flock", flock)


def test_a_filesystem_without_flock_is_a_one_line_error(tmp_path, no_flock, capsys):
    with pytest.raises(TransferbenchError, match=r"cannot lock .*ledger\.jsonl \(Function not implemented\): the "
                                                 r"filesystem under --results does not support flock"):
        append_ledger(tmp_path, [{"run_keys": ["a"]}])
    with pytest.raises(TransferbenchError, match=r"cannot lock .*work/a/\.lock .*Lustre: mount with -o flock"), \
            claim_runs(["a"], tmp_path, job_id="1"):
        pass
    sweep_file, _ = write_fixture_sweep(tmp_path, linear_seeds=(21,), full_seeds=())
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot lock ") and "does not support flock" in err
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


def test_status_needs_no_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "none"))
    assert main(["status", "paper_resnet50_linear", "--results", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "data not found" not in printed
    assert re.search(r"linear\s+1200\s+0\s+0\s+0\s+0\s+0\s+0\s+1200\s+1200\s+0", printed)
    # given a data root, status also says what would keep the runs from starting
    assert main(["status", "paper_resnet50_linear", "--results", str(tmp_path / "out"), "--data-root",
                 str(tmp_path / "nodata")]) == 0
    assert "data not found: aircraft" in capsys.readouterr().out


def _status(sweep_file, out, capsys):
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    return [(u["unit"], u["state"]) for u in status["upstream"]], {r["method"]: r["state"] for r in status["runs"]}


def test_debug_sweep_makes_its_upstream_units_first_then_runs_the_transfer_jobs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    sweep_file, out = write_upstream_sweep(tmp_path), tmp_path / "out"
    args = ["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[upstream 1/1] training magnitude 50% resnet_tiny (tiny recipe, shapes, seed 0) ..." in printed
    assert printed.index("resnet_tiny_magnitude_50_tiny_s0 ready") < printed.index("to run: 2 run(s) in 2 job(s)")
    unit = "resnet_tiny_magnitude_50_tiny_s0"
    assert _status(sweep_file, out, capsys) == ([(unit, DONE)], {"dense": DONE, "magnitude": DONE})
    assert main(args) == 0  # a second sweep trains and runs nothing
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "[upstream" not in printed


def test_a_failing_upstream_unit_is_recorded_and_blocks_only_its_transfer_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    sweep_file = write_upstream_sweep(tmp_path, dataset="imagenet", data_root=str(tmp_path / "no_imagenet"))
    out = tmp_path / "out"
    args = ["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "upstream stage: failed: resnet_tiny_magnitude_50_tiny_s0: TransferbenchError: --dataset imagenet " \
           "needs --data-root" in captured.out
    assert "1 job(s) waiting for the upstream stage" in captured.err
    assert json.loads((out / "upstream" / "failures" / "resnet_tiny_magnitude_50_tiny_s0.json").read_text())["error"]
    assert main([*args, "--only-ready"]) == 0  # the rest runs; a failed unit is retried by --retry-failed only
    assert "[upstream" not in capsys.readouterr().out
    assert main([*args, "--retry-failed"]) == 1  # tried again, and failed again
    assert "upstream stage: failed: resnet_tiny_magnitude_50_tiny_s0" in capsys.readouterr().out
    assert _status(sweep_file, out, capsys) == ([("resnet_tiny_magnitude_50_tiny_s0", FAILED)],
                                                {"dense": DONE, "magnitude": MISSING})


def test_a_from_entry_prepares_one_shot_candidates_under_the_names_the_stage_expects(tmp_path, monkeypatch, capsys):
    """``from: NAME`` (CrAM): the stage prunes the registered dense model one-shot; the unit is done exactly when
    what prune_published registered carries the names the planner gave its products."""
    from transferbench.checkpoints import CheckpointSpec, register_local, save_checkpoint
    from transferbench.models import create_model

    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    dense = tmp_path / "cram_tiny_dense.pth"
    save_checkpoint(dense, create_model("resnet_tiny", num_classes=16), {}, arch="resnet_tiny", dataset="shapes",
                    metadata={})
    register_local(CheckpointSpec(name="cram_tiny", method="cram", sparsity=0.0, arch="resnet_tiny",
                                  filename=dense.name), dense)
    sweep_file = write_upstream_sweep(tmp_path)
    spec = yaml.safe_load(sweep_file.read_text())
    spec["upstream"] = [{"method": "cram", "from": "cram_tiny", "sparsity": ["50%", "90%"], "dataset": "shapes",
                         "recipe": str(tmp_path / "tiny.yaml")}]
    spec.pop("checkpoints")  # transfer every candidate
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--executor", "debug", "--results", str(out), "--workers", "0"]) == 0
    assert "[upstream 1/1] preparing cram 50%, 90% resnet_tiny (one-shot from cram_tiny, shapes" in \
        capsys.readouterr().out
    unit = "cram_tiny_cram_50-90_oneshot_tiny_s42"
    assert _status(sweep_file, out, capsys) == ([(unit, DONE)], {"cram": DONE})
    assert main(["status", str(sweep_file), "--results", str(out), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["upstream"]
    assert row["detail"] == "registered as cram_tiny_cram_50_oneshot_tiny_s42, cram_tiny_cram_90_oneshot_tiny_s42"


def test_a_slurm_task_uses_as_many_threads_as_it_has_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "garbage")
        use_allocated_cpus()
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        use_allocated_cpus()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
