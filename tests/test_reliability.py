"""The reliability suite (issue #15): every bad input ends in one ``error:`` line with exit status 2 and writes
nothing; a full disk leaves no partial file; a corrupt resume state or feature cache is set aside with a note and
rebuilt; a run, an upstream training and a collect killed with SIGKILL at seeded random times and rerun end with
the record of an uninterrupted run; concurrent writers and collectors lose nothing.

The catalogue runs through ``cli.main`` in this process (a few cases in a subprocess, to prove the exit status and
the missing traceback of the real command). Cases whose fix belongs to another area and has not landed yet are
``xfail(strict=True)`` naming their owner: the mark is dropped when the fix lands (a strict xfail that passes fails).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures_data import write_py2_pickle, write_task
from fixtures_models import write_pruned_checkpoint

from transferbench import atomic
from transferbench.cli import main
from transferbench.dispatch.plan import MAX_RUNS

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d transferbench (DEBUG|INFO|WARNING) ")  # progress


# ----------------------------------------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Inputs every case may point at (never written by a case: snapshotted with the case's own folder)."""
    return make_assets(tmp_path_factory.mktemp("assets"))


def make_assets(root: Path) -> Path:
    write_pruned_checkpoint(root / "tiny.pth", sparsity=0.5)
    (root / "garbage.pth").write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    (root / "a_file").write_text("a regular file\n")
    (root / "latin1.yaml").write_bytes("name: caf\xe9\ntasks: [digits]\n".encode("latin-1"))
    (root / "list.yaml").write_text("- digits\n- cifar10\n")
    (root / "empty.yaml").write_text("")
    sweep = ("name: bad\narch: resnet_tiny\ncheckpoints:\n  - {method: gmp, sparsity: 80%}\ntasks: [digits]\n"
             "modes: [linear]\nseeds: [21]\n")
    (root / "nan_sweep.yaml").write_text(sweep + "overrides:\n  linear: {lr: .nan}\n")
    (root / "escape_sweep.yaml").write_text(sweep.replace("{method: gmp, sparsity: 80%}",
                                                          "{method: ../../../escaped, sparsity: 80%, path: "
                                                          f"{root / 'tiny.pth'}}}"))
    (root / "huge_sweep.yaml").write_text(sweep.replace("seeds: [21]", f"seeds: {list(range(1, MAX_RUNS + 2))}"))
    _write_bad_cifar(root / "cifar_labels")
    _write_bomb_task(root / "bomb")
    return root


def _write_bad_cifar(data_root: Path) -> None:
    """CIFAR-10 in its official layout whose test batch has a label 17 (there are 10 classes)."""
    info = write_task("cifar10", data_root, "official", train_per_class=1, test_per_class=1)
    path = info["root"] / "cifar-10-batches-py" / "test_batch"
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")  # our own file, written by the fixture just above
    batch["labels"][3] = 17
    write_py2_pickle(path, batch)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` grey pixels (a decompression bomb's header) with one tiny row."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _write_bomb_task(data_root: Path) -> None:
    """cifar10 in the folders layout with one image replaced by a 40000 x 40000 PNG header (1.6 G pixels)."""
    info = write_task("cifar10", data_root, "folders", train_per_class=1, test_per_class=1, image_size=16)
    victim = sorted((info["root"] / "train").rglob("*.jpg"))[0]  # the first split read: nothing cached before
    victim.write_bytes(_png_header_only(40_000, 40_000))


# ------------------------------------------------------------------------------------------------ the catalogue


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (assets, this case's folder) -> the command's arguments
    owner: str = ""  # the helper whose fix this case waits for (xfail until it lands)
    subprocess: bool = False  # run as a real process: exit status and stderr of the installed command
    setup: Callable[[Path], object] | None = None  # prepares this case's folder (e.g. a read-only mount)


def _run(*extra: str) -> Callable[[Path, Path], list[str]]:
    """`run` of the tiny checkpoint on digits into <case>/results, with ``extra`` flags (later flags win)."""
    def argv(a: Path, t: Path) -> list[str]:
        return ["run", "--task", "digits", "--checkpoint", str(a / "tiny.pth"), "--sparsity", "0.5", "--method",
                "magnitude", "--results", str(t / "results"), "--epochs", "1", "--workers", "0",
                *[x.format(a=a, t=t) for x in extra]]
    return argv


def _cmd(*words: str) -> Callable[[Path, Path], list[str]]:
    return lambda a, t: [w.format(a=a, t=t) for w in words]


def _read_only_results(case_dir: Path) -> None:
    """<case>/results on a read-only file system (root: a read-only tmpfs) or without write permission."""
    results = case_dir / "results"
    results.mkdir()
    (results / "kept.txt").write_text("already here\n")
    if os.geteuid() != 0:
        results.chmod(0o555)
        return
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(results)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("a read-only root needs mount (root) or a non-root user (chmod)")


CATALOGUE = [
    # the results root (issue #15 point 3): checked before any work
    Case("results-under-a-file", _run("--results", "{a}/a_file/results"), subprocess=True),
    Case("results-is-a-file", _run("--results", "{a}/a_file")),
    Case("results-under-proc", _run("--results", "/proc/transferbench-results"), subprocess=True),
    Case("results-under-proc-self", _run("--results", "/proc/self/results")),
    Case("results-under-sys", _run("--results", "/sys/transferbench-results")),
    Case("results-read-only", _run(), setup=_read_only_results, subprocess=True),
    Case("upstream-out-under-a-file", _cmd("upstream", "--method", "gmp", "--out", "{a}/a_file/up")),
    Case("sweep-results-under-a-file", _cmd("sweep", "mini", "--executor", "debug", "--results", "{a}/a_file/r")),
    Case("cache-dir-under-a-file", _run("--cache-dir", "{a}/a_file/cache")),
    # what to run
    Case("unknown-task", _run("--task", "nope")),
    Case("unknown-method", _cmd("run", "--task", "digits", "--method", "nope", "--sparsity", "0.5",
                                "--results", "{t}/results")),
    Case("missing-checkpoint", _run("--checkpoint", "{a}/missing.pth")),
    Case("garbage-checkpoint", _run("--checkpoint", "{a}/garbage.pth")),
    Case("checkpoint-is-a-folder", _run("--checkpoint", "{a}")),
    Case("bad-mode", _run("--mode", "fine"), subprocess=True),
    Case("bad-precision", _run("--precision", "fp8")),
    Case("unknown-command", _cmd("rerun", "--task", "digits")),
    Case("sparsity-not-a-number", _run("--sparsity", "ninety")),
    Case("sparsity-bare-percent", _run("--sparsity", "90")),
    Case("unknown-tracker", _run("--log", "neptune")),
    Case("method-escapes-the-root", _run("--method", "../../../../escaped_run")),
    Case("method-with-a-slash", _run("--method", "mine/evil")),
    # hyper-parameters (issue #15 points 3 and 4)
    Case("set-without-equals", _run("--set", "lr")),
    Case("set-unknown-key", _run("--set", "learning_rate=0.1")),
    Case("set-yaml-tag", _run("--set", "lr=!!python/name:os.system")),
    Case("lbfgs-holdout-2", _run("--solver", "lbfgs", "--set", "lbfgs_holdout=2")),
    Case("lbfgs-c-grid-empty", _run("--solver", "lbfgs", "--set", "lbfgs_c_grid=[]")),
    Case("seed-huge", _run("--seed", str(2**70))),
    Case("seed-negative", _run("--seed", "-1")),
    Case("workers-negative", _run("--workers", "-1")),
    Case("momentum-negative", _run("--momentum", "-0.9")),
    Case("weight-decay-negative", _run("--weight-decay=-5e-4")),
    Case("decay-after-the-run", _run("--set", "lr_decay_after=[5]")),
    Case("epochs-fractional", _cmd("run", "--task", "digits", "--checkpoint", "{a}/tiny.pth", "--sparsity", "0.5",
                                   "--method", "magnitude", "--results", "{t}/results", "--set", "epochs=1.7")),
    Case("epochs-fractional-flag", _run("--epochs", "1.7")),
    Case("epochs-zero", _run("--epochs", "0")),
    Case("lr-nan", _run("--set", "lr=.nan")),
    Case("lr-infinite", _run("--lr", "inf")),
    Case("batch-size-zero", _run("--batch-size", "0")),
    # data (issue #15 point 1)
    Case("cifar-labels-out-of-range-check", _cmd("data", "check", "--task", "cifar10", "--data-root",
                                                 "{a}/cifar_labels")),
    Case("cifar-labels-out-of-range-run", _run("--task", "cifar10", "--data-root", "{a}/cifar_labels",
                                               "--image-size", "32")),
    Case("decompression-bomb-check", _cmd("data", "check", "--task", "cifar10", "--data-root", "{a}/bomb")),
    Case("decompression-bomb-run", _run("--task", "cifar10", "--data-root", "{a}/bomb", "--image-size", "32")),
    Case("data-root-missing", _cmd("data", "check", "--task", "cifar10", "--data-root", "{a}/no_data")),
    # files a user writes: sweeps, profiles, recipes (issue #15 points 3 and 4)
    Case("sweep-not-utf8", _cmd("sweep", "{a}/latin1.yaml", "--dry-run", "--results", "{t}/results")),
    Case("sweep-a-list", _cmd("sweep", "{a}/list.yaml", "--dry-run", "--results", "{t}/results")),
    Case("sweep-empty", _cmd("sweep", "{a}/empty.yaml", "--dry-run", "--results", "{t}/results")),
    Case("sweep-missing-file", _cmd("sweep", "{a}/missing.yaml", "--dry-run", "--results", "{t}/results")),
    Case("sweep-unknown-name", _cmd("sweep", "no_such_sweep", "--dry-run", "--results", "{t}/results")),
    Case("sweep-nan-override", _cmd("sweep", "{a}/nan_sweep.yaml", "--dry-run", "--results", "{t}/results")),
    Case("sweep-method-escapes-the-root", _cmd("sweep", "{a}/escape_sweep.yaml", "--dry-run", "--results",
                                               "{t}/results")),
    Case("sweep-grid-over-the-cap", _cmd("sweep", "{a}/huge_sweep.yaml", "--dry-run", "--results", "{t}/results")),
    Case("profile-not-utf8", _cmd("sweep", "mini", "--dry-run", "--profile", "{a}/latin1.yaml", "--results",
                                  "{t}/results")),
    Case("profile-a-list", _cmd("sweep", "mini", "--dry-run", "--profile", "{a}/list.yaml", "--results",
                                "{t}/results")),
    Case("recipe-not-utf8", _cmd("upstream", "--method", "gmp", "--recipe", "{a}/latin1.yaml", "--out", "{t}/up")),
    Case("recipe-a-list", _cmd("upstream", "--method", "gmp", "--recipe", "{a}/list.yaml", "--out", "{t}/up")),
    Case("recipe-empty", _cmd("upstream", "--method", "gmp", "--recipe", "{a}/empty.yaml", "--out", "{t}/up")),
    Case("upstream-unknown-method", _cmd("upstream", "--method", "nope", "--out", "{t}/up")),
    # reading commands and the registry
    Case("collect-results-a-file", _cmd("collect", "--results", "{a}/a_file")),
    Case("status-unknown-sweep", _cmd("status", "no_such_sweep", "--results", "{t}/results")),
    Case("tasks-show-unknown", _cmd("tasks", "show", "nope")),
    Case("checkpoints-show-unknown", _cmd("checkpoints", "show", "nope")),
    Case("checkpoints-add-missing-file", _cmd("checkpoints", "add", "{a}/missing.pth", "--method", "mine",
                                              "--sparsity", "0.5", "--arch", "resnet_tiny")),
    Case("checkpoints-add-garbage", _cmd("checkpoints", "add", "{a}/garbage.pth", "--method", "mine",
                                         "--sparsity", "0.5", "--arch", "resnet_tiny")),
]


def _marks(case: Case) -> list:
    marks = []
    if case.owner:
        marks.append(pytest.mark.xfail(strict=True, reason=f"owner: {case.owner} — not landed yet"))
    return marks


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every file under ``folders`` with its size and modification time: equal snapshots, nothing written.

    Folders are left out (a command may make its results root before it fails), and so are empty ``.lock``
    files: a run's claim is an flock on one, and a lock file cannot be removed safely while another process may
    be waiting on it.
    """
    seen = {}
    for folder in folders:
        for path in folder.rglob("*") if folder.is_dir() else []:
            st = path.lstat()
            if path.is_dir() or (path.name == ".lock" and st.st_size == 0):
                continue
            seen[str(path)] = (st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture
def private_env(tmp_path, monkeypatch) -> Path:
    """The registry, the upstream trainings and every cache of this case under its own folder."""
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    return tmp_path


def run_cli(argv: list[str], capsys, in_subprocess: bool = False) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the command, in this process or as a real ``python -m transferbench``."""
    if in_subprocess:
        done = subprocess.run([sys.executable, "-m", "transferbench", *argv], capture_output=True, text=True,
                              timeout=120)
        return done.returncode, done.stdout, done.stderr
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, out: str, err: str) -> str:
    """Exit status 2, no traceback, and stderr's one line besides progress logging is ``error: ...``, the last."""
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if not LOG_LINE.match(line)]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert err.rstrip("\n").splitlines()[-1] == lines[0], "the error is the last line"
    return lines[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=_marks(c)) for c in CATALOGUE])
def test_the_catalogue_of_bad_inputs_ends_in_one_error_line_and_writes_nothing(case, assets, private_env, capsys):
    if case.setup is not None:
        case.setup(private_env)
    try:
        before = snapshot(private_env, assets)
        code, out, err = run_cli(case.argv(assets, private_env), capsys, case.subprocess)
        assert_one_error_line(code, out, err)
        assert snapshot(private_env, assets) == before, "the command wrote something"
    finally:
        if case.setup is _read_only_results and os.geteuid() == 0:
            subprocess.run(["umount", str(private_env / "results")], capture_output=True)


def test_a_cache_folder_under_a_file_is_refused_before_the_checkpoint_is_read(assets, private_env, capsys):
    line = assert_one_error_line(*run_cli(_run("--cache-dir", "{a}/a_file/cache")(assets, private_env), capsys))
    assert line.startswith(f"error: --cache-dir {assets}/a_file/cache (in {assets}/a_file): Not a directory"), line


def test_an_os_error_is_one_line_naming_the_path_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import transferbench.cli as cli

    def disk_full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/results/runs.csv")

    monkeypatch.setattr(cli, "cmd_tasks_list", disk_full)
    line = assert_one_error_line(*run_cli(["tasks", "list"], capsys))
    assert line == ("error: /data/results/runs.csv: No space left on device — the disk is full: free some space (or "
                    "point the command at another disk) and rerun; finished epochs, cached features and records are "
                    "kept")

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_tasks_list", bug)
    with pytest.raises(KeyError):  # not an error line: a bug must show where it is
        main(["tasks", "list"])


def test_the_catalogue_has_at_least_40_cases():
    assert len(CATALOGUE) >= 40 and len({c.name for c in CATALOGUE}) == len(CATALOGUE)


# ----------------------------------------------------------------------------------- a full disk, at every writer

WRITERS = {
    "write_bytes": lambda path: atomic.write_bytes(path, b"x" * 200_000),
    "write_json": lambda path: atomic.write_json(path, {"values": list(range(20_000))}),
    "save_npz": lambda path: atomic.save_npz(path, logits=np.arange(20_000, dtype=np.float32)),
    "torch_save": lambda path: atomic.torch_save(path, {"weight": torch.arange(20_000.0)}),
}


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _HalfWritten(io.FileIO):
    """A file that takes half of what it is given and then finds the disk full."""

    def write(self, data) -> int:
        super().write(bytes(data)[: len(data) // 2])
        _enospc()


@pytest.mark.parametrize("fault", ["mkstemp", "mid-write", "fsync", "replace"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_writer_that_hits_a_full_disk_leaves_the_old_file_and_no_temp_file(writer, fault, tmp_path, monkeypatch):
    target = tmp_path / "out" / "file.bin"
    target.parent.mkdir()
    target.write_bytes(b"the previous version")
    if fault == "mkstemp":
        monkeypatch.setattr(atomic.tempfile, "mkstemp", _enospc)
    elif fault == "mid-write":
        monkeypatch.setattr(atomic, "open", lambda fd, mode: _HalfWritten(fd, "w"), raising=False)
    else:
        monkeypatch.setattr(atomic.os, fault, _enospc)
    with pytest.raises(OSError) as raised:
        WRITERS[writer](target)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)  # names the file it wrote
    monkeypatch.undo()
    assert target.read_bytes() == b"the previous version"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"], "a temp file was left behind"


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 2 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but ``leave`` bytes with one file (removed to make room again)."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _leftovers(root: Path) -> list[str]:
    """Temp files, and predictions without their record (a run that died between the two writes)."""
    temps = [str(p) for p in root.rglob("*.tmp")]
    orphans = [str(p) for p in root.glob("runs/*/predictions.npz") if not (p.parent / "result.json").exists()]
    return temps + orphans


@pytest.mark.parametrize("leave_kib", [16, 120])  # the first feature cache entry (200 KB) fails; claims fit
def test_a_run_on_a_really_full_disk_is_one_line_and_runs_once_there_is_room(leave_kib, small_disk, assets,
                                                                             private_env, capsys):
    results = small_disk / "results"
    filler = _fill(small_disk, leave_kib * 1024)
    argv = _run("--results", str(results))(assets, private_env)
    line = assert_one_error_line(*run_cli(argv, capsys))
    assert "No space left on device" in line and str(results) in line, line
    assert not _leftovers(results)
    filler.unlink()
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    assert len(list(results.glob("runs/*/result.json"))) == 1


# Each file a run writes, in order (feature cache entries: train, then test); full runs also write their state.
STAGES = [("linear", "pt", 1), ("linear", "pt", 2), ("linear", "predictions.npz", 1),
          ("linear", "result.json", 1), ("full", "train_state.pt", 1)]


@pytest.mark.parametrize(("mode", "suffix", "nth"), STAGES, ids=[f"{m}-{s}-{n}" for m, s, n in STAGES])
def test_a_full_disk_at_each_write_of_a_run_is_one_line_leaves_nothing_partial_and_the_rerun_completes(
        mode, suffix, nth, assets, private_env, capsys, monkeypatch):
    real_fsync, seen = os.fsync, []

    def fsync_until_full(fd: int) -> None:  # the disk fills up at the nth write of that kind of file
        name = os.readlink(f"/proc/self/fd/{fd}")
        target = Path(name).name.split(f".{atomic._HOST}.")[0]  # .<target>.<host>.<pid>.<random>.tmp
        if name.endswith(".tmp") and target.endswith(suffix):
            seen.append(name)
            if len(seen) == nth:
                _enospc()
        real_fsync(fd)

    results = private_env / "results"
    argv = _run("--mode", mode, "--results", str(results))(assets, private_env)
    monkeypatch.setattr(atomic.os, "fsync", fsync_until_full)
    line = assert_one_error_line(*run_cli(argv, capsys))
    monkeypatch.undo()
    assert "No space left on device" in line and suffix.split(".")[0] in line, line
    assert not _leftovers(results)
    assert not list(results.glob("runs/*/result.json"))
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    assert len(list(results.glob("runs/*/result.json"))) == 1 and not _leftovers(results)


# ------------------------------------------------------------------- corrupt resume states and caches: set aside


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if not LOG_LINE.match(line)]


def _only_record(results: Path) -> tuple[dict, np.ndarray]:
    (path,) = results.glob("runs/*/result.json")
    return json.loads(path.read_text()), np.load(path.parent / "predictions.npz")["logits"]


@pytest.fixture(scope="module")
def full_reference(assets, tmp_path_factory) -> tuple[list[str], dict, np.ndarray]:
    """A 3-epoch full fine-tuning run without interruption: (its arguments but --results, record, logits)."""
    results = tmp_path_factory.mktemp("full_reference") / "results"
    argv = _run("--mode", "full", "--epochs", "3", "--lr", "0.05")(assets, results.parent)
    argv = argv[: argv.index("--results")] + argv[argv.index("--results") + 2:]
    assert main([*argv, "--results", str(results)]) == 0
    return (argv, *_only_record(results))


def _same_result(record: dict, logits: np.ndarray, reference: dict, reference_logits: np.ndarray) -> None:
    assert record["run_key"] == reference["run_key"]
    assert record["metrics"] == reference["metrics"] and record["curve"] == reference["curve"]
    np.testing.assert_array_equal(logits, reference_logits)  # bit for bit


def _truncated_torch_file(path: Path) -> None:
    atomic.torch_save(path, {"model": {"w": torch.arange(50_000.0)}, "epoch": 1})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPT_STATES = {
    "garbage": lambda path: path.write_bytes(os.urandom(4096)),
    "truncated": _truncated_torch_file,
    "empty": lambda path: path.write_bytes(b""),
    "another-model": lambda path: atomic.torch_save(path, {"epoch": 1, "model": {"w": torch.zeros(3)},
                                                           "optimizer": {}, "curve": [{}], "train_seconds": 1.0}),
    "epoch-beyond-the-run": lambda path: atomic.torch_save(path, {"epoch": 9, "model": {}, "optimizer": {},
                                                                  "curve": [{}] * 9, "train_seconds": 1.0}),
}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", list(CORRUPT_STATES))
def test_a_corrupt_train_state_is_set_aside_with_a_note_and_the_run_starts_over(corruption, full_reference,
                                                                                tmp_path, capsys):
    argv, reference, reference_logits = full_reference
    results = tmp_path / "results"
    state = results / "work" / reference["run_key"] / "train_state.pt"
    state.parent.mkdir(parents=True)
    CORRUPT_STATES[corruption](state)
    code, _, err = run_cli([*argv, "--results", str(results)], capsys)
    assert code == 0, err[-3000:]
    (note,) = _notes(err)
    assert note.startswith(f"note: {state} is unusable") and "set aside as train_state.pt.corrupt-" in note, note
    assert not state.parent.exists()  # the finished run cleared its work folder, the set-aside state with it
    _same_result(*_only_record(results), reference, reference_logits)


FEATURE_CORRUPTIONS = {
    "wrong-shape": lambda blob: {"features": blob["features"][:, :5].T.contiguous(), "labels": blob["labels"]},
    "wrong-dtype": lambda blob: {"features": blob["features"].double(), "labels": blob["labels"]},
    "labels-short": lambda blob: {"features": blob["features"], "labels": blob["labels"][:-1]},
    "not-a-dict": lambda blob: [blob["features"]],
}


@pytest.mark.parametrize("corruption", [*FEATURE_CORRUPTIONS, "unreadable"])
def test_a_corrupt_feature_cache_entry_is_set_aside_with_a_note_and_rebuilt(corruption, assets, tmp_path, capsys):
    reference_results, results = tmp_path / "reference", tmp_path / "results"
    assert main(_run("--results", str(reference_results))(assets, tmp_path)) == 0
    reference, reference_logits = _only_record(reference_results)
    for entry in (reference_results / "cache" / "features").glob("*.pt"):
        target = results / "cache" / "features" / entry.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if corruption == "unreadable":
            target.write_bytes(entry.read_bytes()[:1000])
        else:
            atomic.torch_save(target, FEATURE_CORRUPTIONS[corruption](torch.load(entry, weights_only=True)))
    capsys.readouterr()
    code, _, err = run_cli(_run("--results", str(results))(assets, tmp_path), capsys)
    assert code == 0, err[-3000:]
    notes = _notes(err)
    assert len(notes) == 2 and all(n.startswith("note: ") and ".pt.corrupt-" in n for n in notes), notes
    record, logits = _only_record(results)
    assert record["metrics"] == reference["metrics"]
    np.testing.assert_array_equal(logits, reference_logits)
    for entry in (results / "cache" / "features").glob("*.pt"):  # rebuilt, equal to the reference's
        rebuilt = torch.load(entry, weights_only=True)
        original = torch.load(reference_results / "cache" / "features" / entry.name, weights_only=True)
        assert torch.equal(rebuilt["features"], original["features"])


def test_a_corrupt_upstream_state_is_set_aside_and_the_training_starts_over(tmp_path, capsys):
    from transferbench.models import create_model
    from transferbench.pruning.magnitude import MagnitudePruner
    from transferbench.upstream.distributed import World
    from transferbench.upstream.state import STATE_FILE, load_state, save_state

    def fresh():
        torch.manual_seed(0)
        model = create_model("resnet_tiny", num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, optimizer, MagnitudePruner(model, 0.5), {"draws": torch.Generator().manual_seed(1)}

    world, cpu = World(), torch.device("cpu")
    model, optimizer, pruner, generators = fresh()
    pruner.prune()
    save_state(tmp_path, world, cpu, epoch=2, epochs=4, model=model, optimizer=optimizer, pruner=pruner,
               generators=generators, train_seconds=1.5, losses=[2.0, 1.5])
    good = (tmp_path / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(good[: len(good) // 2])  # killed mid-copy by something else than us

    model, optimizer, pruner, generators = fresh()
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    capsys.readouterr()
    assert load_state(tmp_path, world, cpu, model=model, optimizer=optimizer, pruner=pruner,
                      generators=generators) is None
    (note,) = _notes(capsys.readouterr().err)
    assert note.startswith("note: ") and f"{STATE_FILE}.corrupt-" in note
    assert not (tmp_path / STATE_FILE).exists() and len(list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))) == 1
    for key, tensor in model.state_dict().items():  # the half-applied state was undone: a fresh start
        assert torch.equal(tensor, untouched[key]), key
    assert not optimizer.state_dict()["state"]

    (tmp_path / STATE_FILE).write_bytes(good)  # and an intact state still resumes
    resumed = load_state(tmp_path, world, cpu, model=model, optimizer=optimizer, pruner=pruner,
                         generators=generators)
    assert resumed is not None and resumed.epoch == 2 and resumed.losses == [2.0, 1.5]


# ---------------------------------------------------------------------------- status over an odd results root

ODD_LEDGER_LINES = [b"not json at all", b"[1, 2]", b"42", b"\xff\xfe\x00 binary", b'{"run_keys": "not-a-list"}',
                    b'{"run_keys": [1, null]}', b"", b'{"run_keys": ["trunc', b"{}" * 50_000]


def test_status_over_odd_ledger_lines_and_bad_records_reports_and_does_not_fail(assets, private_env, capsys):
    sweep = private_env / "odd.yaml"
    sweep.write_text(f"name: odd\narch: resnet_tiny\ncheckpoints:\n  - {{method: magnitude, sparsity: 50%, path: "
                     f"{assets / 'tiny.pth'}}}\ntasks: [digits]\nmodes: [linear]\nseeds: [21, 51, 81]\n")
    results = private_env / "results"
    status = ["status", str(sweep), "--results", str(results), "--json"]
    code, out, err = run_cli(status, capsys)
    assert code == 0, err
    keys = [run["run_key"] for run in json.loads(out)["runs"]]
    assert len(keys) == 3
    for key, bad in zip(keys, ("a list", "a folder", "not UTF-8"), strict=True):
        record = results / "runs" / key / "result.json"
        record.parent.mkdir(parents=True)
        if bad == "a folder":
            record.mkdir()
        else:
            record.write_bytes(b"[1, 2, 3]\n" if bad == "a list" else b'{"run_key": "\xff\xfe"}')
    (results / "jobs").mkdir()
    (results / "jobs" / "ledger.jsonl").write_bytes(b"\n".join(ODD_LEDGER_LINES) + b"\n")
    for argv in (status, status[:-1]):
        code, out, err = run_cli(argv, capsys)
        assert code == 0 and "Traceback" not in out + err, err[-3000:]
    states = {run["run_key"]: run["state"] for run in json.loads(run_cli(status, capsys)[1])["runs"]}
    assert sorted(states) == sorted(keys) and "done" not in states.values()  # none of them counts as done


@pytest.mark.parametrize("blocked", ["result.json", "predictions.npz"])
def test_a_record_path_that_is_a_folder_is_refused_before_any_work(blocked, assets, private_env, capsys,
                                                                   monkeypatch):
    import shutil

    import transferbench.runner as runner

    argv = _run()(assets, private_env)
    assert run_cli(argv, capsys)[0] == 0
    [record] = (private_env / "results").glob("runs/*/result.json")
    for name in ("result.json", "predictions.npz"):
        (record.parent / name).unlink()
    (record.parent / blocked).mkdir()
    (record.parent / blocked / "something").write_text("kept")
    before = snapshot(private_env)

    def no_work(*_args, **_kwargs):
        raise AssertionError("the run started its work")

    monkeypatch.setattr(runner, "_prepare", no_work)
    line = assert_one_error_line(*run_cli(argv, capsys))
    assert line == (f"error: {record.parent / blocked} is not a file (the run writes its {blocked} there); remove "
                    "it and run again")
    assert snapshot(private_env) == before
    shutil.rmtree(record.parent / blocked)
    monkeypatch.undo()
    assert run_cli(argv, capsys)[0] == 0 and record.is_file()


# ------------------------------------------------------------------------- kill -9 at seeded random times, rerun


def _stamps(root: Path, marker: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.glob(marker) if p.exists()}


def _killed_at(command: list[str], env: dict, delay: float, root: Path, marker: str | None) -> bool:
    """Start ``command`` and SIGKILL it ``delay`` seconds after it started or, with ``marker`` (a glob under
    ``root``), after it first wrote such a file (a finished epoch); whether it was still running then."""
    before = _stamps(root, marker) if marker else {}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while marker and _stamps(root, marker) in ({}, before) and proc.poll() is None:
        assert time.monotonic() < deadline, "the command never wrote " + marker
        time.sleep(0.005)
    try:
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL
        proc.wait()
        return True


def _kill_chain(command: list[str], env: dict, seed: int, root: Path, marker: str, run_s: float, epoch_s: float,
                start_marker: str | None = None, kills: int = 3) -> int:
    """Kill ``command`` ``kills`` times at seeded random points scaled to the uninterrupted run (``run_s`` from its
    start, or from when it wrote ``start_marker``; ``epoch_s`` an epoch), so that they land while it runs on a fast
    machine as on a slow one: the first anywhere in its first 80% (before or after a saved epoch), the others within
    the epoch after one it saved. Then run it to its end; returns how many kills hit it running."""
    rng = random.Random(seed)
    hits = _killed_at(command, env, rng.uniform(0.05, 0.8) * run_s, root, start_marker)
    hits += sum(_killed_at(command, env, rng.uniform(0.0, 0.8) * epoch_s, root, marker) for _ in range(kills - 1))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return hits


def _cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "transferbench", *argv]


@pytest.mark.slow
def test_a_full_run_killed_at_random_times_ends_with_the_uninterrupted_record(full_reference, tmp_path):
    argv, reference, reference_logits = full_reference
    results = tmp_path / "results"
    timings = reference["timings"]  # the uninterrupted run's, from its claim on: scales the kill times
    hits = _kill_chain(_cli_command(*argv, "--results", str(results)), dict(os.environ, PYTHONHASHSEED="0"),
                       seed=15, root=results, marker="work/*/train_state.pt", run_s=timings["total_s"],
                       epoch_s=timings["training_s"] / len(reference["curve"]), start_marker="work/*/claim.json")
    assert hits >= 2, "the kills came after the run had finished"
    record, logits = _only_record(results)
    assert record["timings"]["resumed_from_epoch"] >= 1  # the last kill came after a saved epoch
    _same_result(record, logits, reference, reference_logits)
    assert not _leftovers(results) and not list(results.glob("work/*/train_state.pt"))


@pytest.fixture(scope="module")
def kill_recipe(tmp_path_factory) -> Path:
    from transferbench.upstream import load_recipe

    recipe = load_recipe("small_cpu")
    recipe.update(name="kill9", train_size=320, test_size=64, batch_size=32, epochs=6)
    path = tmp_path_factory.mktemp("recipe") / "kill9.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_an_upstream_training_killed_at_random_times_ends_with_the_uninterrupted_checkpoint(kill_recipe, tmp_path):
    command = _cli_command("upstream", "--method", "gmp", "--sparsity", "0.75", "--recipe", str(kill_recipe),
                           "--device", "cpu")
    reference, killed = tmp_path / "reference", tmp_path / "killed"

    def env(folder: Path) -> dict:
        return dict(os.environ, TRANSFERBENCH_CHECKPOINTS=str(folder), PYTHONHASHSEED="0")

    start = time.monotonic()
    done = subprocess.run(command, env=env(reference), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wall = time.monotonic() - start  # the uninterrupted process's, and its training's per epoch: the kill times
    [theirs] = (reference / "upstream").glob("resnet_tiny_gmp_*.pth")
    epoch_s = torch.load(theirs, weights_only=True)["metadata"]["train_seconds"] / yaml.safe_load(
        kill_recipe.read_text())["epochs"]
    hits = _kill_chain(command, env(killed), seed=16, root=killed, marker="upstream/work/*/progress.json",
                       run_s=wall, epoch_s=epoch_s)
    assert hits >= 2, "the kills came after the training had finished"
    (ours,), (theirs,) = (sorted((f / "upstream").glob("resnet_tiny_gmp_*.pth")) for f in (killed, reference))
    a, b = (torch.load(p, weights_only=True) for p in (ours, theirs))
    assert a["metadata"]["training"]["resumed_from_epoch"] >= 1
    assert a["metadata"]["training"]["epoch_losses"] == b["metadata"]["training"]["epoch_losses"]
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for key, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][key]), key
    assert not _leftovers(killed)


def _store_of_records(root: Path, count: int) -> list[str]:
    """``count`` completed records of several tasks, methods, sparsities and seeds; returns their run keys."""
    from fixtures_records import write_completed

    from transferbench.runspec import CheckpointRef, make_spec

    keys = []
    for i in range(count):
        method, sparsity = [("dense", 0.0), ("gmp", 0.8), ("acdc", 0.9), ("magnitude", 0.5)][i % 4]
        ref = CheckpointRef(method, sparsity, "resnet_tiny", f"sha256:{i % 4:064x}")
        spec = make_spec(["digits", "cifar10"][(i // 4) % 2], ["linear", "full"][(i // 8) % 2], 21 + i // 16, ref,
                         {"epochs": 1})
        write_completed(root, spec, i, np.full((4, 10), i / count, np.float32))
        keys.append(spec.run_key)
    return keys


def _outputs(root: Path) -> dict[str, bytes]:
    """What collect wrote: its tables and leaderboards, byte for byte (the parquet file as its CSV), with the
    root's path in the records' paths as <root>."""
    import pandas as pd

    files = {str(p.relative_to(root)): p.read_bytes() for p in [*root.glob("*.csv"), *root.glob("leaderboards/*")]}
    files["runs.parquet"] = pd.read_parquet(root / "runs.parquet").to_csv(index=False).encode()
    return {name: data.replace(str(root).encode(), b"<root>") for name, data in files.items()}  # records' paths


@pytest.mark.slow
def test_a_collect_killed_at_random_times_ends_with_the_uninterrupted_tables(tmp_path, capsys):
    import shutil

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _store_of_records(reference, 160)
    shutil.copytree(reference, killed)
    assert main(["collect", "--results", str(reference), "--workers", "1"]) == 0
    capsys.readouterr()
    command = _cli_command("collect", "--results", str(killed), "--workers", "1")
    rng = random.Random(17)  # a kill while it reads, then kills within its writes (the tables, the leaderboards)
    hits = _killed_at(command, os.environ.copy(), rng.uniform(0.5, 3.0), killed, None)
    hits += sum(_killed_at(command, os.environ.copy(), rng.uniform(0.0, 0.3), killed, marker)
                for marker in ("runs.parquet", "runs.csv", "leaderboards/*"))
    assert hits >= 2, "collect finished before the kills"
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outputs(killed) == _outputs(reference)
    assert not _leftovers(killed)


def test_a_write_removes_the_temp_files_killed_writers_left_and_keeps_live_ones(tmp_path):
    target = tmp_path / "runs.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has ended (its pid not yet reused within this test)
    host = atomic._HOST
    names = {"dead_here": f".runs.csv.{host}.{dead_pid}.ab12_x.tmp",
             "alive_here": f".runs.csv.{host}.{os.getpid()}.cd34_y.tmp",
             "recent_elsewhere": ".runs.csv.node-7.cluster.4242.ef56_z.tmp",
             "old_elsewhere": ".runs.csv.node-8.cluster.4243.gh78_w.tmp",
             "other_file": f".failed.csv.{host}.{dead_pid}.ij90_v.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - atomic.STALE_TEMP_S - 60
    os.utime(tmp_path / names["old_elsewhere"], (old, old))
    atomic.write_bytes(target, b"a,b\n")
    left = {key for key, name in names.items() if (tmp_path / name).exists()}
    assert left == {"alive_here", "recent_elsewhere", "other_file"}
    assert target.read_bytes() == b"a,b\n"


# ----------------------------------------------------------------------------------- eight writers at one root


def _record_writer(root: str, worker: int, count: int, barrier) -> None:
    from fixtures_records import write_completed

    from transferbench.runspec import CheckpointRef, make_spec

    barrier.wait()
    for i in range(count):
        ref = CheckpointRef("gmp", 0.8, "resnet_tiny", f"sha256:{worker:064x}")
        write_completed(root, make_spec("digits", "linear", 100 + 1000 * worker + i, ref, {"epochs": 1}), worker)


def _collector(root: str, rounds: int, barrier) -> None:
    barrier.wait()
    for _ in range(rounds):
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(["collect", "--results", root, "--workers", "1"])
        if code != 0:
            raise SystemExit(f"collect failed ({code}): {out.getvalue()[-1000:]} {err.getvalue()[-2000:]}")


@pytest.mark.slow
def test_eight_processes_writing_records_and_collecting_at_once_lose_nothing(tmp_path):
    """4 writers add records while 4 collectors read the same root; test_concurrency.py covers writers alone."""
    import multiprocessing as mp

    import pandas as pd

    from transferbench.context import package_versions

    package_versions()  # sklearn/scipy imported once here, not in each forked process
    _store_of_records(tmp_path, 8)  # collect has something to read from the start
    ctx = mp.get_context("fork")
    writers, collectors, per_writer = 4, 4, 30
    barrier = ctx.Barrier(writers + collectors)
    procs = [ctx.Process(target=_record_writer, args=(str(tmp_path), w, per_writer, barrier)) for w in range(writers)]
    procs += [ctx.Process(target=_collector, args=(str(tmp_path), 3, barrier)) for _ in range(collectors)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert main(["collect", "--results", str(tmp_path), "--workers", "1"]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 8 + writers * per_writer and runs["run_key"].is_unique
    assert not _leftovers(tmp_path)
