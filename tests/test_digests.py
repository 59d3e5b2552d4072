"""Content hashes: memoised per process and persisted across processes for large files, never stale."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from transferbench import digests


@pytest.fixture
def big_file(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "PERSISTED_FROM_BYTES", 1024)
    monkeypatch.setenv("TRANSFERBENCH_DIGEST_CACHE", str(tmp_path / "cache" / "sha256.json"))
    digests._sha256.cache_clear()
    path = tmp_path / "model.pth"
    path.write_bytes(os.urandom(4096))
    yield path
    digests._sha256.cache_clear()


def test_large_files_are_hashed_once_across_processes(big_file, tmp_path):
    digest = digests.sha256_file(big_file)
    assert digest == hashlib.sha256(big_file.read_bytes()).hexdigest()
    entry = json.loads((tmp_path / "cache" / "sha256.json").read_text())[os.path.realpath(big_file)]
    assert entry == {"size": 4096, "mtime_ns": big_file.stat().st_mtime_ns, "sha256": digest}

    # A new process (no memo) trusts the entry while size and mtime match, as git trusts its index: same bytes
    # count and time, other content, and the recorded digest comes back without reading the file.
    digests._sha256.cache_clear()
    st = big_file.stat()
    big_file.write_bytes(os.urandom(4096))
    os.utime(big_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digests.sha256_file(big_file) == digest


def test_a_changed_file_is_hashed_again(big_file):
    first = digests.sha256_file(big_file)
    digests._sha256.cache_clear()
    big_file.write_bytes(os.urandom(4096))
    os.utime(big_file, ns=(1, 1))  # another mtime, as any rewrite or download gives
    assert digests.sha256_file(big_file) == hashlib.sha256(big_file.read_bytes()).hexdigest() != first


def test_a_corrupt_cache_is_ignored_and_rewritten(big_file, tmp_path):
    cache = tmp_path / "cache" / "sha256.json"
    cache.parent.mkdir()
    cache.write_text("{not json")
    assert digests.sha256_file(big_file) == hashlib.sha256(big_file.read_bytes()).hexdigest()
    assert os.path.realpath(big_file) in json.loads(cache.read_text())


def test_small_files_are_not_persisted(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERBENCH_DIGEST_CACHE", str(tmp_path / "sha256.json"))
    small = tmp_path / "tiny.pth"
    small.write_bytes(b"x" * 100)
    assert digests.sha256_file(small) == hashlib.sha256(b"x" * 100).hexdigest()
    assert not (tmp_path / "sha256.json").exists()
