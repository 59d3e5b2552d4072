"""The checkpoint lock file: the sha256 of each published file as first downloaded (``checkpoints fetch``), kept
beside the checkpoints and checked on every later use, so a file that changed in place is refused."""

from __future__ import annotations

import fcntl
import json
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_json
from ..errors import TransferbenchError
from .registry import CheckpointSpec, add_command, normalize_sha256

LOCK_FILE = "checkpoints.lock.json"


def lock_path(directory: Path) -> Path:
    """The lock file of the checkpoints in ``directory``: the sha256 of each file as first downloaded."""
    return directory / LOCK_FILE


def read_lock(directory: Path) -> dict[str, dict]:
    """File name → {sha256, size, source, rows, recorded}; {} when there is no lock file."""
    path = lock_path(directory)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise TransferbenchError(f"cannot read {path}; fix it, or delete it to record the digests again") from None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) and "sha256" in e for e in entries.values()):
        raise TransferbenchError(f"{path} is not a checkpoint lock file; fix it, or delete it to record the digests "
                                 "again")
    return entries


def record_download(folder: Path, filename: str, digest: str, size: int, spec: CheckpointSpec, source: str) -> None:
    """Add a file's digest to ``folder``'s lock file (atomically, under a lock: parallel fetches keep theirs)."""
    with open(folder / f".{LOCK_FILE}.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        entries = read_lock(folder)
        known = entries.get(filename, {})
        entries[filename] = {"sha256": digest, "size": size, "source": source,
                             "rows": sorted({*known.get("rows", []), spec.name}),
                             "recorded": known.get("recorded") or datetime.now(timezone.utc).isoformat(" ", "seconds")}
        write_json(lock_path(folder), entries)


def recorded_sha256(path: Path) -> str | None:
    """The digest the lock file beside ``path`` recorded for it, or None."""
    entry = read_lock(path.parent).get(path.name)
    return None if entry is None else str(entry["sha256"])


def verify_recorded(spec: CheckpointSpec, path: Path, digest: str) -> None:
    """Refuse ``path`` (sha256 ``digest``), the file of the published row ``spec``, when it differs from the row's
    pinned digest or from the one the lock file beside it recorded when it was first downloaded. One's own files
    (``checkpoints add``, ``upstream``) are left to their registered digest, which loading checks."""
    if spec.path:
        return
    pinned = normalize_sha256(spec.sha256, spec.name)
    if pinned and not digest.startswith(pinned):
        raise TransferbenchError(
            f"checksum mismatch for {path}: sha256 is {digest[:16]}…, the registry pins {pinned} for {spec.name}; "
            f"the file is corrupt or a different checkpoint: delete it and run `transferbench checkpoints fetch "
            f"{spec.name}`"
        )
    recorded = recorded_sha256(path)
    if recorded and digest != recorded:
        raise TransferbenchError(
            f"{path} changed since it was first downloaded: sha256 {digest[:16]}…, {lock_path(path.parent)} "
            f"recorded {recorded[:16]}…; delete it and run `transferbench checkpoints fetch {spec.name}`, or, if you "
            f"replaced it on purpose, {add_command(spec, str(path))}"
        )
