"""`checkpoints fetch` and `checkpoints add` against a local HTTP server on 127.0.0.1 serving fixture files:
resumed downloads, refused corrupt files, the lock file of first-download digests, mirrors, non-public rows."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fixtures_models import write_pruned_checkpoint

from transferbench.checkpoints import (
    CheckpointSpec,
    find_checkpoint,
    list_checkpoints,
    load_registered,
    local_path,
    registry,
)
from transferbench.checkpoints import fetch as fetch_module
from transferbench.checkpoints.fetch import LOCK_FILE, sources
from transferbench.checkpoints.resolve import registered_ref
from transferbench.cli import main
from transferbench.errors import TransferbenchError

SEAFILE = "/d/0123abcd/files/?p=/{}&dl=1"  # a file in a Seafile shared folder, as the table's URLs name them


class FixtureServer:
    """Files by request path (query included); ``cut[path] = n`` sends only n bytes of the next GET of ``path``,
    then closes the connection; every request is logged as (method, path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.content_type: dict[str, str] = {}
        self.cut: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.fixture = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path`` (None: the whole file)."""
        return [r for method, p, r in self.requests if method == "GET" and p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        fixture: FixtureServer = self.server.fixture  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        fixture.requests.append((self.command, self.path, requested))
        if self.path in fixture.redirects:  # as Seafile sends a shared file's link on to its file server
            self.send_response(302)
            self.send_header("Location", fixture.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = fixture.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1]) if requested else 0
        if start >= len(data) and requested:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if requested else 200)
        self.send_header("Content-Type", fixture.content_type.get(self.path, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for key, value in fixture.headers.get(self.path, {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not send_body:
            return
        if self.command == "GET" and (cut := fixture.cut.pop(self.path, None)) is not None:
            self.wfile.write(body[:cut])  # then hang up, as a dropped connection does
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    fixture = FixtureServer()
    fixture.thread.start()
    yield fixture
    fixture.httpd.shutdown()
    fixture.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty checkpoint directory, and no waiting between resumptions."""
    folder = tmp_path / "ckpts"
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(folder))
    monkeypatch.setattr(fetch_module, "RETRY_WAIT_S", 0.0)
    return folder


def use_table(monkeypatch, *rows: CheckpointSpec) -> None:
    """The published table is ``rows`` for this test."""
    monkeypatch.setattr(registry, "_table", lambda: tuple(rows))


def row(name: str, url: str | None, sha256: str | None = None, method: str = "acdc", sparsity: float = 0.5,
        **fields) -> CheckpointSpec:
    return CheckpointSpec(name=name, method=method, sparsity=sparsity, arch="resnet_tiny", url=url, sha256=sha256,
                          **{"filename": f"{name}.pth", **fields})


def blob(size: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line[:4].isdigit()]  # log lines start with a timestamp


def lock(folder: Path) -> dict:
    return json.loads((folder / LOCK_FILE).read_text())


# ------------------------------------------------------------------------------------------------ downloads


def test_an_interrupted_download_is_resumed_with_a_range_request(server, home, monkeypatch, capsys):
    data, link, path = blob(300_000), SEAFILE.format("acdc_50.pth"), "/seafhttp/files/x/acdc_50.pth"
    server.redirects[link] = path
    server.files[path] = data
    server.cut[path] = 100_000  # the first connection drops after 100,000 bytes
    use_table(monkeypatch, row("tiny_acdc_50", server.url(link), sha256=sha(data)[:8]))
    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "tiny_acdc_50")
    assert code == 0 and "downloaded" in out
    assert server.gets(link) == [None, "bytes=100000-"]  # the Range header survives the redirect
    assert server.gets(path) == [None, "bytes=100000-"]  # the second request asked only for the rest
    assert sha((home / "tiny_acdc_50.pth").read_bytes()) == sha(data)
    assert not (home / "tiny_acdc_50.pth.part").exists()
    assert lock(home)["tiny_acdc_50.pth"]["sha256"] == sha(data)  # the full digest of a pinned prefix


def test_a_part_left_by_an_earlier_run_is_continued(server, home, monkeypatch, capsys):
    data, path = blob(50_000, seed=1), "/models/tiny.pth"
    server.files[path] = data
    home.mkdir()
    (home / "tiny.pth.part").write_bytes(data[:12_345])  # an earlier fetch stopped there
    use_table(monkeypatch, row("tiny", server.url(path), sha256=sha(data)))
    assert run_cli(capsys, "checkpoints", "fetch", "tiny")[0] == 0
    assert server.gets(path) == ["bytes=12345-"]
    assert (home / "tiny.pth").read_bytes() == data


def test_checkpoint_dir_puts_the_file_and_its_lock_elsewhere(server, home, monkeypatch, capsys, tmp_path):
    data = blob(2000, 10)
    server.files["/e.pth"] = data
    spec = row("e", server.url("/e.pth"))
    use_table(monkeypatch, spec)
    elsewhere = tmp_path / "shared"
    assert run_cli(capsys, "checkpoints", "fetch", "e", "--checkpoint-dir", elsewhere)[0] == 0
    assert (elsewhere / "e.pth").read_bytes() == data and lock(elsewhere)["e.pth"]["sha256"] == sha(data)
    assert not home.exists()
    (elsewhere / "e.pth").write_bytes(data[::-1])
    with pytest.raises(TransferbenchError, match="changed since it was first downloaded"):
        registered_ref(spec, elsewhere)


def test_a_server_that_ignores_range_sends_the_whole_file_again(server, home, monkeypatch, capsys):
    data, path = blob(20_000, seed=2), "/plain.pth"
    server.files[path] = data
    home.mkdir()
    (home / "plain.pth.part").write_bytes(b"junk that is not the start of the file")
    use_table(monkeypatch, row("plain", server.url(path), sha256=sha(data)))
    monkeypatch.setattr(_Handler, "_serve", _ignore_range(_Handler._serve))
    assert run_cli(capsys, "checkpoints", "fetch", "plain")[0] == 0
    assert (home / "plain.pth").read_bytes() == data


def _ignore_range(serve):
    def without_range(self, send_body):
        del self.headers["Range"]
        serve(self, send_body)
    return without_range


def test_a_corrupt_download_is_refused_and_nothing_is_kept(server, home, monkeypatch, capsys):
    data, path = blob(40_000, seed=3), SEAFILE.format("acdc_50.pth")
    server.files[path] = data[:-1] + b"!"  # one byte differs from the file the registry pins
    use_table(monkeypatch, row("tiny_acdc_50", server.url(path), sha256=sha(data)))
    code, out, err = run_cli(capsys, "checkpoints", "fetch", "tiny_acdc_50")
    [line] = error_lines(err)
    assert code == 2 and out == ""
    assert "tiny_acdc_50" in line and f"not the pinned {sha(data)}" in line and "nothing was kept" in line
    assert f"open {server.base}/d/0123abcd/, download the acdc 50% file and save it as {home}/tiny_acdc_50.pth" in line
    assert list(home.iterdir()) == []  # no file, no .part, no lock entry


def test_an_unpinned_file_is_recorded_on_first_download_and_checked_on_every_later_use(server, home, monkeypatch,
                                                                                       capsys, tmp_path):
    source = tmp_path / "served.pth"
    write_pruned_checkpoint(source, sparsity=0.5)
    data, path = source.read_bytes(), "/tiny_acdc_50.pth"
    server.files[path] = data
    spec = row("tiny_acdc_50", server.url(path))  # sha256 unknown
    use_table(monkeypatch, spec)
    assert run_cli(capsys, "checkpoints", "fetch", "tiny_acdc_50")[0] == 0
    entry = lock(home)["tiny_acdc_50.pth"]
    assert entry["sha256"] == sha(data) and entry["size"] == len(data) and entry["source"] == server.url(path)
    assert entry["rows"] == ["tiny_acdc_50"]

    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "tiny_acdc_50")  # present: verified, not downloaded
    assert code == 0 and "present" in out and len(server.gets(path)) == 1
    assert registered_ref(spec).identity == f"tiny_acdc_50@sha256:{sha(data)}"
    assert load_registered(spec).sha256 == sha(data)

    with (home / "tiny_acdc_50.pth").open("ab") as f:  # the file changes after its first download
        f.write(b"\0")
    for use in (registered_ref, load_registered):
        with pytest.raises(TransferbenchError, match=r"changed since it was first downloaded.*checkpoints fetch"):
            use(spec)
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "tiny_acdc_50")
    [line] = error_lines(err)
    assert code == 2 and LOCK_FILE in line and sha(data)[:16] in line


def test_a_file_put_in_place_by_hand_is_recorded_by_fetch(home, monkeypatch, capsys):
    spec = row("by_hand", "http://127.0.0.1:9/never-asked")
    use_table(monkeypatch, spec)
    home.mkdir()
    (home / "by_hand.pth").write_bytes(b"copied from a colleague")
    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "by_hand")
    assert code == 0 and "present" in out
    assert lock(home)["by_hand.pth"]["sha256"] == sha(b"copied from a colleague")
    assert lock(home)["by_hand.pth"]["source"] == "found in place"


def test_fetch_all_of_one_method_fetches_only_that_method(server, home, monkeypatch, capsys):
    files = {"/a50.pth": blob(1000, 4), "/a90.pth": blob(1000, 5), "/g50.pth": blob(1000, 6)}
    server.files.update(files)
    use_table(monkeypatch, row("a50", server.url("/a50.pth")), row("a90", server.url("/a90.pth"), sparsity=0.9),
              row("g50", server.url("/g50.pth"), method="gmp"), row("ticket", None, method="lth_t"))
    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "--all", "--method", "acdc")
    assert code == 0
    assert sorted(p for _, p, _ in server.requests) == ["/a50.pth", "/a90.pth"]
    assert sorted(p.name for p in home.glob("*.pth")) == ["a50.pth", "a90.pth"]
    assert sorted(lock(home)) == ["a50.pth", "a90.pth"]

    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "--all")  # the rest; the non-public row is listed
    assert code == 0 and sorted(p.name for p in home.glob("*.pth")) == ["a50.pth", "a90.pth", "g50.pth"]
    assert [line.split(":")[0] for line in out.splitlines()] == ["a50", "a90", "g50", "ticket"]
    assert "ticket: not public" in out

    code, _, err = run_cli(capsys, "checkpoints", "fetch", "--all", "--method", "snip")
    assert code == 2 and "unknown method 'snip' (--method)" in err
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "--method", "acdc")
    assert code == 2 and "--all" in err


def test_a_one_shot_row_fetches_its_dense_file_once_and_says_what_prepares_it(server, home, monkeypatch, capsys):
    data = blob(3000, 9)
    server.files["/cram.pth"] = data
    dense = row("tiny_cram", server.url("/cram.pth"), method="cram", sparsity=0.0)
    use_table(monkeypatch, dense, *(row(f"tiny_cram_{s}", dense.url, method="cram", sparsity=s / 100, oneshot=True,
                                        oneshot_from="tiny_cram", filename="tiny_cram.pth") for s in (80, 90)))
    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "tiny_cram_80", "tiny_cram_90")
    assert code == 0 and server.gets("/cram.pth") == [None]  # one file for both rows
    assert "transferbench upstream --method cram --from tiny_cram --sparsity 0.8" in out
    assert (home / "tiny_cram.pth").read_bytes() == data and "tiny_cram: downloaded" in out
    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "--all", "--method", "cram")
    assert code == 0 and len(out.splitlines()) == 1 and "tiny_cram: present" in out  # one file, one line


def test_a_non_public_row_says_so_in_one_line(home, monkeypatch, capsys):
    use_table(monkeypatch, row("ticket_50", None, method="lth_t", obtain="ask the authors of the tickets"))
    code, out, err = run_cli(capsys, "checkpoints", "fetch", "ticket_50")
    [line] = error_lines(err)
    assert code == 2 and out == ""
    assert line == ("error: ticket_50: not public; ask the authors of the tickets; then `transferbench checkpoints "
                    "add FILE --method lth_t --sparsity 0.5 --arch resnet_tiny`")
    assert not home.exists()


def test_a_name_the_shared_folder_lacks_is_one_line_naming_the_folder(server, home, monkeypatch, capsys):
    use_table(monkeypatch, row("guessed", server.url(SEAFILE.format("acdc_50.pth"))))  # the folder has no such file
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "guessed")
    [line] = error_lines(err)
    assert code == 2 and "HTTP 404" in line and f"open {server.base}/d/0123abcd/" in line
    assert list(home.iterdir()) == []


def test_a_web_page_instead_of_the_file_is_refused(server, home, monkeypatch, capsys):
    server.files["/d/0123abcd/"] = b"<html>a folder listing</html>"
    server.content_type["/d/0123abcd/"] = "text/html; charset=utf-8"
    use_table(monkeypatch, row("folder", server.url("/d/0123abcd/")))
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "folder")
    assert code == 2 and "web page" in err and not (home / "folder.pth").exists()


def test_a_mirror_is_used_when_the_url_fails(server, home, monkeypatch, capsys):
    data = blob(5000, 7)
    server.files["/mirror/m.pth"] = data
    use_table(monkeypatch, row("m", server.url("/gone.pth"), sha256=sha(data),
                               mirrors=[{"url": server.url("/mirror/m.pth")}]))
    code, out, _ = run_cli(capsys, "checkpoints", "fetch", "m")
    assert code == 0 and server.url("/mirror/m.pth") in out
    assert (home / "m.pth").read_bytes() == data and server.gets("/gone.pth") == [None]


def test_a_hugging_face_hub_mirror(server, home, monkeypatch, capsys, tmp_path):
    pytest.importorskip("huggingface_hub")
    data = blob(7000, 8)
    hub_path = "/someone/sparse-models/resolve/main/rn/tiny.pth"  # {repo}/resolve/{revision}/{filename}
    server.files[hub_path] = data
    server.headers[hub_path] = {"X-Repo-Commit": "0" * 40, "ETag": f'"{sha(data)}"'}
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    use_table(monkeypatch, row("hubbed", None, sha256=sha(data),
                               mirrors=[{"hf": "someone/sparse-models:rn/tiny.pth"}]))
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "hubbed")
    assert code == 0, err
    assert (home / "hubbed.pth").read_bytes() == data
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == [LOCK_FILE, "hubbed.pth"]
    assert not (home / ".hubbed.pth.part.hf").exists()
    assert any(p == hub_path for _, p, _ in server.requests)


def test_an_unreachable_source_fails_after_two_attempts_in_one_line(home, monkeypatch, capsys):
    use_table(monkeypatch, row("far", "http://127.0.0.1:9/far.pth"))  # nothing listens on the discard port
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "far")
    [line] = error_lines(err)
    assert code == 2 and "could not fetch far" in line and "after 2 attempts" in line
    assert not (home / "far.pth").exists() and not (home / "far.pth.part").exists()


def test_malformed_mirrors_are_one_line_errors():
    with pytest.raises(TransferbenchError, match=r"bad: each mirror is one of"):
        sources(row("bad", None, mirrors=[{"ftp": "x"}]))
    with pytest.raises(TransferbenchError, match=r"bad: hf mirror 'nope' is not owner/repo"):
        sources(row("bad", None, mirrors=[{"hf": "nope"}]))


# ------------------------------------------------------------------------------------------------ the shipped table


def test_every_published_row_has_a_direct_file_url_and_every_other_says_how_to_get_it():
    for spec in list_checkpoints(include_local=False):
        if spec.url is None:
            assert spec.method == "lth_t" and "transferbench upstream --method lth" in spec.obtain, spec.name
            continue
        assert sources(spec)[0] == ("url", spec.url)
        assert (re.fullmatch(r"https://seafile\.ist\.ac\.at/d/[0-9a-f]{20}/files/\?p=/[\w.]+\.pth&dl=1", spec.url)
                or re.fullmatch(r"https://seafile\.ist\.ac\.at/f/[0-9a-f]{20}/\?dl=1", spec.url)
                or spec.url.endswith(".pth")), spec.name
    text = Path(registry.__file__).parent.parent.joinpath("shipped", "checkpoints", "table.yaml").read_text()
    assert "register_local" not in text
    assert yaml.safe_load(text)  # still YAML


def test_missing_files_point_at_fetch_and_add(home):
    with pytest.raises(TransferbenchError, match=r"run `transferbench checkpoints fetch resnet50_acdc_90`"):
        local_path(find_checkpoint("acdc", 0.9))
    with pytest.raises(TransferbenchError, match=r"not publicly available.*transferbench checkpoints add FILE "
                                                 r"--method lth_t --sparsity 0.9 --arch resnet50"):
        local_path(find_checkpoint("lth_t", 0.9))


# ------------------------------------------------------------------------------------------------ add


def test_add_registers_ones_own_file_after_loading_it(home, capsys, tmp_path):
    mine = tmp_path / "my_acdc.pth"
    write_pruned_checkpoint(mine, sparsity=0.5)
    code, out, _ = run_cli(capsys, "checkpoints", "add", mine, "--method", "acdc", "--sparsity", "50%",
                           "--arch", "resnet_tiny")
    assert code == 0 and "registered acdc_50_resnet_tiny" in out
    spec = find_checkpoint("acdc", 0.5, "resnet_tiny")
    assert (spec.name, spec.path, spec.sha256) == ("acdc_50_resnet_tiny", str(mine.resolve()), sha(mine.read_bytes()))

    wrong = tmp_path / "wrong.pth"
    write_pruned_checkpoint(wrong, sparsity=0.5)
    before = (home / "local.yaml").read_text()
    code, _, err = run_cli(capsys, "checkpoints", "add", wrong, "--method", "gmp", "--sparsity", "0.9",
                           "--arch", "resnet_tiny")  # 50% of zeros, claimed 90%: refused, nothing written
    [line] = error_lines(err)
    assert code == 2 and "sparsity" in line and (home / "local.yaml").read_text() == before
    code, _, err = run_cli(capsys, "checkpoints", "add", tmp_path / "absent.pth", "--method", "gmp", "--sparsity",
                           "0.5", "--arch", "resnet_tiny")
    assert code == 2 and "absent.pth" in err


def test_add_gives_a_published_row_its_file_and_checks_a_pinned_digest(home, monkeypatch, capsys, tmp_path):
    mine = tmp_path / "ticket.pth"
    write_pruned_checkpoint(mine, sparsity=0.5)
    use_table(monkeypatch, row("tiny_ticket", None, method="acdc", notes="not public"),
              row("pinned", "http://127.0.0.1:9/x", sha256="0" * 64, method="gmp"))
    assert run_cli(capsys, "checkpoints", "add", mine, "--method", "acdc", "--sparsity", "0.5", "--arch",
                   "resnet_tiny")[0] == 0
    spec = find_checkpoint("acdc", 0.5, "resnet_tiny")
    assert (spec.name, spec.notes, spec.path) == ("tiny_ticket", "not public", str(mine.resolve()))
    assert local_path(spec) == mine.resolve()
    code, _, err = run_cli(capsys, "checkpoints", "add", mine, "--method", "gmp", "--sparsity", "0.5", "--arch",
                           "resnet_tiny")  # the registry pins another file for that row
    assert code == 2 and "checksum mismatch" in err
    assert [s.name for s in registry._local()] == ["tiny_ticket"]


def test_a_broken_lock_file_is_reported_and_can_be_recorded_again(home, monkeypatch, capsys):
    use_table(monkeypatch, row("x", "http://127.0.0.1:9/x"))
    home.mkdir()
    (home / "x.pth").write_bytes(b"x")
    (home / LOCK_FILE).write_text("{not json")
    code, _, err = run_cli(capsys, "checkpoints", "fetch", "x")
    assert code == 2 and LOCK_FILE in err and "delete it" in err
    (home / LOCK_FILE).unlink()
    assert run_cli(capsys, "checkpoints", "fetch", "x")[0] == 0
    assert not [p for p in os.listdir(home) if p.endswith(".tmp")]
