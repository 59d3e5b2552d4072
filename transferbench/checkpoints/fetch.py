"""Getting checkpoint files onto this machine: `checkpoints fetch` (published rows) and `checkpoints add` (own files).

A row's file comes from its ``url`` (a direct file URL) or, when that fails, from one of its ``mirrors`` (another
URL, or a Hugging Face Hub file through ``huggingface_hub``). A download goes to ``<file>.part``, resumes with an
HTTP Range request after an interruption, and becomes ``<file>`` (an atomic rename) only once its sha256 matches:
the registry's pinned digest where it has one, else the digest recorded in ``checkpoints.lock.json`` beside the
file, which the first download (or the first fetch of a file put there by hand) writes. Every later use of the file
(``verify_recorded``, called where checkpoints are resolved and loaded) checks it against both.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..digests import sha256_file
from ..errors import TransferbenchError
from ..names import check_component, check_name, inside
from ..version import __version__
from ..vocabulary import format_sparsity, method_matches, normalize_sparsity, resolve_method
from .lockfile import LOCK_FILE, lock_path, record_download, recorded_sha256, verify_recorded
from .registry import (
    ENV_CHECKPOINTS,
    CheckpointSpec,
    add_command,
    checkpoint_dir,
    checkpoint_file,
    list_checkpoints,
    named_checkpoint,
    normalize_sha256,
    oneshot_source,
    register_local,
)

if TYPE_CHECKING:
    from http.client import HTTPResponse

PART_SUFFIX = ".part"
MIRROR_KINDS = ("url", "hf")
ATTEMPTS = 5  # connections per source: the first and up to four resumptions after interruptions
RETRY_WAIT_S = 1.0  # times the attempt number, between resumptions
TIMEOUT_S = 60
_CHUNK = 1 << 20
_SEAFILE_FOLDER = re.compile(r"^(https?://[^/]+/d/[0-9a-f]+/)files/\?p=")


@dataclass(frozen=True)
class Fetched:
    """What `fetch` did for one row: ``status`` is downloaded, present or not public."""

    spec: CheckpointSpec
    status: str
    path: Path | None = None
    sha256: str | None = None
    source: str | None = None
    message: str = ""


class _SourceFailed(Exception):
    """One source could not deliver the file (the next one is tried)."""


# ------------------------------------------------------------------------------------------------ the lock file


# ------------------------------------------------------------------------------------------------ sources


def sources(spec: CheckpointSpec) -> list[tuple[str, str]]:
    """Where ``spec``'s file can be downloaded from, in order: (kind, location), kind ``url`` or ``hf``."""
    found = [("url", spec.url)] if spec.url else []
    for mirror in spec.mirrors or []:
        if not (isinstance(mirror, dict) and len(mirror) == 1 and next(iter(mirror)) in MIRROR_KINDS):
            raise TransferbenchError(f"{spec.name}: each mirror is one of `url: https://...` or `hf: "
                                     f"owner/repo[@revision]:path/in/repo`, not {mirror!r}; fix the row")
        [(kind, location)] = mirror.items()
        if kind == "hf" and not _hf_reference(str(location)):
            raise TransferbenchError(f"{spec.name}: hf mirror {location!r} is not owner/repo[@revision]:path (a path "
                                     "inside the repository, without '..'); fix the row")
        found.append((kind, str(location)))
    return found


def _hf_reference(location: str) -> bool:
    """Whether ``location`` is ``owner/repo[@revision]:path`` with a path that stays inside the download's staging
    folder (huggingface_hub writes the file at ``<staging>/<path>``): relative, no ``..`` part."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?:\S+", location):
        return False
    path = location.partition(":")[2]
    return not path.startswith("/") and ".." not in path.replace("\\", "/").split("/")


def _download_url(url: str, part: Path) -> None:
    """``url`` into ``part``, resuming what ``part`` already holds with a Range request after an interruption."""
    import http.client  # here, not at the top: resolve.py imports this module, and `run` need not pay for them
    import urllib.error
    import urllib.request

    failure, stalled, attempts = "no attempt", 0, 0
    while attempts < ATTEMPTS and stalled < 2:  # two attempts in a row without a byte (no such host): give up
        if attempts:
            time.sleep(RETRY_WAIT_S * attempts)
        attempts += 1
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"transferbench/{__version__}", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
                _receive(response, part, have)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing after what `part` holds: it is whole, its digest will tell
                return
            raise _SourceFailed(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failure = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            stalled = 0 if part.exists() and part.stat().st_size > have else stalled + 1
    raise _SourceFailed(f"{failure} (after {attempts} attempts)")


def _receive(response: HTTPResponse, part: Path, have: int) -> None:
    import http.client

    from ..progress import interactive

    if response.headers.get_content_type() == "text/html":
        raise _SourceFailed("the server sent a web page, not the file (a folder link or a login page?)")
    resumed = bool(have) and response.status == 206
    if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
        part.unlink()  # another range than asked for: start again from the first byte (the loop retries)
        raise http.client.HTTPException(f"the server answered the range {have}- with another one")
    start = have if resumed else 0  # a server that ignores Range sends everything again
    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    from tqdm import tqdm

    with open(part, "ab" if resumed else "wb") as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                             unit_divisor=1024, desc=part.name[:-len(PART_SUFFIX)],
                                                             disable=not interactive(), leave=False) as bar:
        while block := response.read(_CHUNK):
            out.write(block)
            bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _download_hf(reference: str, part: Path) -> None:
    """A Hugging Face Hub file (``owner/repo[@revision]:path``) into ``part``, through huggingface_hub (its own
    resume and progress; ``$HF_ENDPOINT`` for another endpoint)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise _SourceFailed("needs huggingface_hub: pip install 'transferbench[hub]'") from None
    repo, _, filename = reference.partition(":")
    repo_id, _, revision = repo.partition("@")
    staging = part.with_name(f".{part.name}.hf")  # kept on failure, so the next try resumes
    try:
        got = hf_hub_download(repo_id, filename, revision=revision or None, local_dir=staging,
                              endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as exc:  # the hub raises many types; for us each is "this source failed"
        raise _SourceFailed((str(exc).strip().splitlines() or [type(exc).__name__])[0]) from None
    os.replace(got, part)
    shutil.rmtree(staging, ignore_errors=True)


def _download(kind: str, location: str, part: Path) -> None:
    (_download_hf if kind == "hf" else _download_url)(location, part)


# ------------------------------------------------------------------------------------------------ fetch


def not_public_line(spec: CheckpointSpec) -> str:
    """The one line `fetch` prints for a row no source can download."""
    return f"{spec.name}: not public; {spec.obtain or 'get the file from its authors'}; then {add_command(spec)}"


def fetch_checkpoint(spec: CheckpointSpec, directory: str | os.PathLike | None = None) -> Fetched:
    """Make ``spec``'s file present and verified in ``directory`` (default: the checkpoint directory).

    A file already there is checked (and its digest recorded if the lock file has none); a row without sources
    returns status ``not public``; otherwise the file is downloaded from the first source that delivers one whose
    digest matches. Raises TransferbenchError (one line) when no source does, leaving no file behind.
    """
    folder = Path(directory).expanduser() if directory is not None else checkpoint_dir()
    existing, present = checkpoint_file(spec, folder)
    if present:
        digest = sha256_file(existing)
        verify_recorded(spec, existing, digest)
        if existing == folder / spec.filename and recorded_sha256(existing) is None:  # put there by hand
            with contextlib.suppress(PermissionError):  # a shared read-only folder: checked, just not recorded
                record_download(folder, spec.filename, digest, existing.stat().st_size, spec, "found in place")
        return Fetched(spec, "present", existing, digest)
    if spec.path:
        raise TransferbenchError(f"{spec.name} was added from {spec.path}, which no longer exists; add it again with "
                                 f"{add_command(spec, 'PATH')}")
    found = sources(spec)
    if not found:
        return Fetched(spec, "not public", message=not_public_line(spec))
    # the row's file name, never one taken from a URL: a URL ending in `..` or `%2F..` names no file here
    target = inside(folder, folder / check_component(spec.filename, f"{spec.name}: filename"), "checkpoint directory")
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise TransferbenchError(f"cannot write to {folder}; choose another folder with --checkpoint-dir or "
                                 f"${ENV_CHECKPOINTS}")
    failures: list[str] = []
    part = target.with_name(target.name + PART_SUFFIX)
    for kind, location in found:
        try:
            _download(kind, location, part)
            digest = sha256_file(part)
            _check_download(spec, target, digest)
        except _SourceFailed as exc:
            failures.append(f"{location}: {exc}")
            continue
        except TransferbenchError as exc:
            part.unlink(missing_ok=True)  # a complete file with the wrong digest: resuming it cannot help
            failures.append(f"{location}: {exc}")
            continue
        # the digest first, then the file: a file in place is never unpinned
        record_download(folder, target.name, digest, part.stat().st_size, spec, location)
        os.replace(part, target)
        return Fetched(spec, "downloaded", target, digest, location)
    resume = f"; {part.name} is kept: the same command resumes it" if part.exists() else ""
    raise TransferbenchError(f"could not fetch {spec.name} ({'; '.join(failures)}){resume}"
                             f"{_folder_hint(spec, target)}")


def _check_download(spec: CheckpointSpec, target: Path, digest: str) -> None:
    pinned = normalize_sha256(spec.sha256, spec.name)
    if pinned and not digest.startswith(pinned):
        raise TransferbenchError(f"sha256 {digest[:16]}… is not the pinned {pinned}; nothing was kept")
    recorded = recorded_sha256(target)
    if recorded and digest != recorded:
        raise TransferbenchError(f"sha256 {digest[:16]}… is not the {recorded[:16]}… recorded in "
                                 f"{lock_path(target.parent)}; nothing was kept")


def _folder_hint(spec: CheckpointSpec, target: Path) -> str:
    folder = _SEAFILE_FOLDER.match(spec.url or "")
    if folder is None:
        return ""
    return (f"; the file's path in the shared folder is inferred: open {folder.group(1)}, download the "
            f"{spec.method} {format_sparsity(spec.sparsity)} file and save it as {target}")


def rows_to_fetch(names: list[str], everything: bool, method: str | None = None,
                  arch: str | None = None) -> list[CheckpointSpec]:
    """The rows `fetch` handles: the ones named, or (``everything``) every published row, of ``method`` and
    ``arch`` when given (names and aliases resolved as `checkpoints list` resolves them). A one-shot row stands for
    the dense row whose file it is pruned from; each file comes once."""
    from .listing import filter_checkpoints

    if names and everything:
        raise TransferbenchError("name checkpoints or pass --all, not both")
    if everything:
        rows = [s for s in filter_checkpoints(method, arch) if s.source == "table"]
    elif method is not None or arch is not None:
        raise TransferbenchError("--method and --arch select rows for --all; add --all, or name the rows")
    elif names:
        rows = [_named(name) for name in names]
    else:
        raise TransferbenchError("name a checkpoint (see `transferbench checkpoints list`) or pass --all")
    files, unique = set(), []
    for spec in (oneshot_source(s) if s.oneshot else s for s in rows):
        if (spec.path or spec.filename) not in files:
            files.add(spec.path or spec.filename)
            unique.append(spec)
    return unique


def _named(name: str) -> CheckpointSpec:
    spec = named_checkpoint(name)
    if spec is None:
        raise TransferbenchError(f"no checkpoint named {name!r}; see `transferbench checkpoints list`")
    if spec.oneshot:
        from .resolve import prepare_command

        print(f"{name} is {spec.oneshot_from}'s file pruned one-shot: fetching {spec.oneshot_from}; then run "
              f"`{prepare_command([spec])}`")
    return spec


def describe(done: Fetched) -> str:
    """The one line `fetch` prints for a row."""
    if done.status == "not public":
        return done.message
    where = f"{done.path} (sha256 {done.sha256[:16]}…"
    if done.status == "downloaded":
        return f"{done.spec.name}: downloaded {where} from {done.source}; recorded in {LOCK_FILE})"
    return f"{done.spec.name}: present {where}, verified)"


def fetch_rows(specs: list[CheckpointSpec], directory: str | os.PathLike | None = None,
               names_given: bool = True) -> int:
    """Fetch each row, printing one line per row; the exit status (0: every file present or downloaded). Rows
    named explicitly that cannot be downloaded are an error; with --all they are listed and skipped. A failed row
    does not stop the others (its line goes to stderr); one failure ends in a TransferbenchError."""
    failed = []
    for spec in specs:
        try:
            done = fetch_checkpoint(spec, directory)
        except TransferbenchError as exc:
            if len(specs) == 1:
                raise
            print(f"error: {exc}", file=sys.stderr)
            failed.append(spec.name)
            continue
        if done.status == "not public" and names_given:
            raise TransferbenchError(done.message)
        print(describe(done))
    if failed:
        raise TransferbenchError(f"{len(failed)} of {len(specs)} checkpoints could not be fetched: {', '.join(failed)}"
                                 " (the lines above say why; run the command again to resume)")
    return 0


# ------------------------------------------------------------------------------------------------ add


def add_checkpoint(path: str | os.PathLike, method: str, sparsity: float | str, arch: str, name: str | None = None,
                   allow_sparsity_gap: bool = False) -> CheckpointSpec:
    """Register one's own file as the checkpoint of ``method`` at ``sparsity`` for ``arch`` (``local.yaml``).

    Where a published row has that method, sparsity and arch (and ``name`` is not another one), the file becomes
    that row's (its pinned sha256, if any, must match); otherwise a new row ``name`` (default
    ``<method>_<percent>_<arch>``). The file is loaded first: its arch, and the sparsity measured over the weights
    the method prunes, must fit, so a wrong file is refused before anything is written.
    """
    from .load import load_checkpoint

    for value, flag in ((method, "--method"), (arch, "--arch"), (name, "--name")):  # before the file is read
        if value is not None:
            check_name(value, flag)
    file = Path(path).expanduser()
    target = normalize_sparsity(sparsity)
    if registered := method_matches(method, {s.method for s in list_checkpoints()}):
        method = resolve_method(method, registered)  # an alias (lth) names its registered method (lth_t)
    published = next((s for s in list_checkpoints(include_local=False)
                      if s.method == method and s.arch == arch and abs(s.sparsity - target) < 5e-4
                      and name in (None, s.name) and not s.oneshot), None)  # a one-shot row's file is the dense one
    spec = (published if published is not None else
            CheckpointSpec(name=name or f"{method}_{round(target * 100, 2):g}_{arch}", method=method,
                           sparsity=target, arch=arch))
    check_name(spec.name, "the row's name (--name; default <method>_<percent>_<arch>)")
    load_checkpoint(file, arch=arch, expected_sha256=spec.sha256, target_sparsity=target,
                    allow_sparsity_gap=allow_sparsity_gap, method=method, prunable=spec.prunable)
    return register_local(spec, file)
