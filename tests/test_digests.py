"""Content hashes: memoised per process and persisted across processes for large files, never stale."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from transferbench import digests

RACY_S = 0.05  # the tests' clock tick: a file is trusted once its times are this much older than the hashing


@pytest.fixture
def big_file(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "PERSISTED_FROM_BYTES", 1024)
    monkeypatch.setattr(digests, "RACY_S", RACY_S)
    monkeypatch.setenv("TRANSFERBENCH_DIGEST_CACHE", str(tmp_path / "cache" / "sha256.json"))
    digests.clear_memo()
    path = tmp_path / "model.pth"
    path.write_bytes(os.urandom(4096))
    _settle()
    yield path
    digests.clear_memo()


def _settle() -> None:
    """Let the files just written age past the racy window, so that their digests may be remembered."""
    time.sleep(2 * RACY_S)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache(tmp_path) -> dict:
    return json.loads((tmp_path / "cache" / "sha256.json").read_text())


def _rewrite_in_place(path, data: bytes) -> None:
    """Write ``data`` over ``path`` (same inode) and set its times back, as a careless in-place edit may."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) == (st.st_ino, st.st_size,
                                                                                   st.st_mtime_ns)


def test_large_files_are_hashed_once_across_processes(big_file, tmp_path):
    digest = digests.sha256_file(big_file)
    assert digest == _sha(big_file)
    st = big_file.stat()
    assert _cache(tmp_path)[os.path.realpath(big_file)] == {
        "dev": st.st_dev, "ino": st.st_ino, "size": 4096, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
        "sha256": digest}

    # A new process (no memo) takes the entry while the file's identity is unchanged, without reading the file:
    # shown by planting a digest the bytes do not have under the file's real identity.
    digests.clear_memo()
    cache = _cache(tmp_path)
    cache[os.path.realpath(big_file)]["sha256"] = "f" * 64
    (tmp_path / "cache" / "sha256.json").write_text(json.dumps(cache))
    assert digests.sha256_file(big_file) == "f" * 64


def test_an_in_place_rewrite_with_its_mtime_restored_is_hashed_again(big_file):
    first = digests.sha256_file(big_file)
    _rewrite_in_place(big_file, os.urandom(4096))  # same path, inode, size and mtime: only ctime tells
    assert digests.sha256_file(big_file) == _sha(big_file) != first  # this process's memo is not fooled either
    digests.clear_memo()
    assert digests.sha256_file(big_file) == _sha(big_file)  # nor the persisted cache


def test_a_rewrite_within_the_racy_window_is_never_trusted(big_file, monkeypatch):
    """Hashing a file whose times are too recent remembers nothing: a second write in the same clock tick would
    leave every time unchanged."""
    monkeypatch.setattr(digests, "RACY_S", 3600.0)
    first = digests.sha256_file(big_file)
    assert not digests._memo and not (big_file.parent / "cache" / "sha256.json").exists()
    _rewrite_in_place(big_file, os.urandom(4096))
    assert digests.sha256_file(big_file) == _sha(big_file) != first


def test_a_good_copy_made_with_cp_p_over_a_bad_one_is_accepted(big_file, tmp_path):
    good = tmp_path / "good.pth"
    good.write_bytes(os.urandom(4096))
    os.utime(big_file, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns))  # the bad copy: same size and mtime
    _settle()
    bad_digest = digests.sha256_file(big_file)
    assert bad_digest != _sha(good)
    cp = shutil.which("cp")
    assert cp is not None
    subprocess.run([cp, "-p", str(good), str(big_file)], check=True)  # over the bad file: same path and inode
    assert big_file.stat().st_mtime_ns == good.stat().st_mtime_ns
    assert digests.sha256_file(big_file) == _sha(good)
    digests.clear_memo()
    assert digests.sha256_file(big_file) == _sha(good)


def test_a_changed_file_is_hashed_again(big_file):
    first = digests.sha256_file(big_file)
    digests.clear_memo()
    big_file.write_bytes(os.urandom(4096))
    os.utime(big_file, ns=(1, 1))  # another mtime, as any rewrite or download gives
    assert digests.sha256_file(big_file) == _sha(big_file) != first


def test_an_entry_of_the_older_layout_is_not_trusted(big_file, tmp_path):
    cache = tmp_path / "cache" / "sha256.json"
    cache.parent.mkdir()
    st = big_file.stat()
    cache.write_text(json.dumps({os.path.realpath(big_file): {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                              "sha256": "0" * 64}}))
    assert digests.sha256_file(big_file) == _sha(big_file)


def test_a_corrupt_cache_is_ignored_and_rewritten(big_file, tmp_path):
    cache = tmp_path / "cache" / "sha256.json"
    cache.parent.mkdir()
    cache.write_text("{not json")
    assert digests.sha256_file(big_file) == _sha(big_file)
    assert os.path.realpath(big_file) in json.loads(cache.read_text())


def test_small_files_are_not_persisted(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_DIGEST_CACHE", str(tmp_path / "sha256.json"))
    small = tmp_path / "tiny.pth"
    small.write_bytes(b"x" * 100)
    assert digests.sha256_file(small) == hashlib.sha256(b"x" * 100).hexdigest()
    assert not (tmp_path / "sha256.json").exists()
