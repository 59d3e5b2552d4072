"""The checkpoint registry: published checkpoints (``table.yaml``) plus the user's own (``local.yaml``).

Checkpoints are looked up by (method, sparsity, architecture family); files live in ``checkpoint_dir()``
under the name the table gives (``transferbench checkpoints fetch`` downloads them there), or wherever
``register_local`` (``transferbench checkpoints add``) recorded them.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .. import shipped
from ..atomic import write_bytes
from ..digests import sha256_file
from ..errors import TransferbenchError
from ..names import check_name
from ..sparsity_rules import SparsityRule, prunable_set_names, sparsity_rule  # torch-free: `checkpoints list`
from ..vocabulary import arch_family, format_sparsity, method_matches, normalize_sparsity, resolve_method

ENV_CHECKPOINTS = "TRANSFERBENCH_CHECKPOINTS"
DEFAULT_CHECKPOINT_DIR = "~/.cache/transferbench/checkpoints"
LOCAL_REGISTRY = "local.yaml"
DEFAULT_FAMILY = "resnet50"
_SPARSITY_TOLERANCE = 5e-4
_HEX = re.compile(r"^[0-9a-f]+$")
MIN_SHA256_PREFIX = 8
# What a one-shot candidate was pruned from: a registry row's file (NAME@sha256:HEX) or a file given by path
# (sha256:HEX), as a run's CheckpointRef.identity names its checkpoint.
# The notes `transferbench upstream` writes on a model it trained ("... (small_cpu recipe, shapes, seed 0)") or
# pruned one-shot (`--from`: "... on 2000 class-balanced imagenet training images ..."), which name its dataset.
_TRAINED_HERE = re.compile(r"\([^,()]+ recipe, (?P<dataset>[^,()]+), seed \d+\)"
                           r"|class-balanced (?P<calibrated_on>\S+) training images")
_SOURCE_IDENTITY = re.compile(r"^(?:(?P<name>[^@\s]+)@)?sha256:(?P<digest>[0-9a-f]{64})$")


def normalize_sha256(value: str | None, origin: str) -> str | None:
    """Lower-case hex digest or prefix of ≥ 8 digits (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TransferbenchError(f"{origin}: sha256 must be a quoted hex string, not {value!r}")
    digest = value.strip().lower()
    if not _HEX.match(digest) or not MIN_SHA256_PREFIX <= len(digest) <= 64:
        raise TransferbenchError(
            f"{origin}: sha256 {value!r} is not a hex digest or a prefix of at least {MIN_SHA256_PREFIX} digits"
        )
    return digest


@dataclass(frozen=True)
class CheckpointSpec:
    """One upstream checkpoint: what it is, where to get it, and what it should measure."""

    name: str
    method: str
    sparsity: float  # registered (nominal) fraction of zeros over the weights the method prunes (`prunable`)
    arch: str
    format: str = "auto"
    filename: str = ""
    url: str | None = None  # None: not public
    sha256: str | None = None  # full digest or a prefix of ≥ 8 hex digits; None: unknown
    upstream_top1: float | None = None
    oneshot: bool = False  # dense file; prune one-shot + recalibrate BN to reach `sparsity` (CrAM)
    oneshot_from: str | None = None  # a one-shot row: the dense row (name) whose file is pruned
    pruned_from: str | None = None  # a one-shot candidate: the dense file it came from, NAME@sha256:HEX or sha256:HEX
    notes: str = ""
    path: str | None = None  # absolute file of a user-registered checkpoint (local.yaml)
    source: str = "table"  # "table" or "local"
    prunable: str | None = None  # the prunable set (sparsity_rules.yaml); None: the method's own
    mirrors: list | None = None  # other sources of the file: [{url: URL} | {hf: owner/repo:path}] (fetch.py)
    obtain: str | None = None  # a row no source can download: how to get or produce its file (one line)
    at_chance: bool | None = None  # a model trained here scored chance upstream (upstream/chance.py); None: not known
    # a model trained here on a multi-label study task (celeba, faces): its head predicts that task's attributes, and
    # it is found only for that task (`run --mode evaluate`), never in place of an ImageNet (or mini-suite) model
    trained_for: str | None = None

    @property
    def family(self) -> str:
        return arch_family(self.arch)

    @property
    def public(self) -> bool:
        return self.url is not None

    @property
    def sparsity_rule(self) -> SparsityRule:
        """Which weights the method prunes and what its registered sparsity means there (the loader's gate)."""
        return sparsity_rule(self.method, self.prunable, self.arch)

    @property
    def upstream_data(self) -> str:
        """What ``upstream_top1`` was measured on: ImageNet for the published rows; for a model trained here, the
        dataset its notes name (`transferbench upstream` writes "(<recipe> recipe, <dataset>, seed N)"), e.g. the
        synthetic ``shapes`` set of the mini-suite's resnet_tiny; else "unknown"."""
        if self.source == "table":
            return "imagenet"
        trained_here = _TRAINED_HERE.search(self.notes)
        return (trained_here["dataset"] or trained_here["calibrated_on"]) if trained_here else "unknown"

    @property
    def label(self) -> str:
        return f"{self.method} {format_sparsity(self.sparsity)} {self.arch} ({self.name})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Any, origin: str, source: str) -> CheckpointSpec:
        """Validate one YAML row; any problem names ``origin`` (the YAML file)."""
        if not isinstance(row, dict):
            raise TransferbenchError(f"{origin}: every entry must be a mapping, found {row!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(row) - known)
        missing = [k for k in ("name", "method", "sparsity", "arch") if row.get(k) in (None, "")]
        if unknown or missing:
            problem = f"unknown fields {unknown}" if unknown else f"missing {missing}"
            raise TransferbenchError(f"{origin}: entry {row.get('name', '?')!r} has {problem}")
        values = dict(row)
        values["source"] = source
        values["sparsity"] = normalize_sparsity(values["sparsity"])
        values["sha256"] = normalize_sha256(values.get("sha256"), f"{origin} ({row['name']})")
        values["filename"] = values.get("filename") or f"{row['name']}.pth"
        for key in ("name", "method", "arch", *(() if values.get("path") else ("filename",))):  # parts of paths
            check_name(values[key], f"{origin}: entry {row['name']!r}: {key}")
        values["notes"] = values.get("notes") or ""
        if values.get("prunable") is not None and values["prunable"] not in prunable_set_names():
            raise TransferbenchError(f"{origin}: entry {row['name']!r} has prunable {values['prunable']!r}; use one "
                                     f"of {', '.join(prunable_set_names())}")
        if bool(values.get("oneshot")) != bool(values.get("oneshot_from")):
            raise TransferbenchError(f"{origin}: entry {row['name']!r}: a one-shot row (oneshot: true) names the dense "
                                     "row it is pruned from (oneshot_from), and only a one-shot row does")
        if values.get("pruned_from") is not None and not _SOURCE_IDENTITY.match(str(values["pruned_from"])):
            raise TransferbenchError(f"{origin}: entry {row['name']!r} has pruned_from {values['pruned_from']!r}; "
                                     "write NAME@sha256:<64 hex digits> or sha256:<64 hex digits>")
        return cls(**values)


@cache
def _table() -> tuple[CheckpointSpec, ...]:
    rows, origin, _ = shipped.load_shipped("checkpoints", "table")
    if not isinstance(rows, list):
        raise TransferbenchError(f"{origin} must hold a list of checkpoint entries; fix the file")
    specs = tuple(CheckpointSpec.from_row(row, origin, "table") for row in rows)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise TransferbenchError(f"{origin} has duplicate names")
    by_name = {s.name: s for s in specs}
    for spec in specs:
        if spec.oneshot and not _is_dense_source_of(by_name.get(spec.oneshot_from), spec):
            raise TransferbenchError(f"{origin}: {spec.name} is pruned from {spec.oneshot_from!r}, which must be a "
                                     f"dense row of the same arch and file ({spec.filename})")
    return specs


def _is_dense_source_of(source: CheckpointSpec | None, oneshot: CheckpointSpec) -> bool:
    return (source is not None and not source.oneshot and source.sparsity == 0.0 and source.arch == oneshot.arch
            and source.filename == oneshot.filename)


def published_checkpoint(name: str) -> CheckpointSpec:
    """The published (table) row called ``name``, never a user-registered one: its file is the one the table's
    sha256 names (e.g. ``resnet50_dense``, torchvision's ResNet-50)."""
    spec = next((s for s in _table() if s.name == name), None)
    if spec is None:
        raise TransferbenchError(f"no published checkpoint named {name!r}; see `transferbench checkpoints list`")
    return spec


def checkpoint_dir() -> Path:
    """Where registry checkpoints are expected: $TRANSFERBENCH_CHECKPOINTS or ~/.cache/transferbench/checkpoints."""
    return Path(os.environ.get(ENV_CHECKPOINTS) or DEFAULT_CHECKPOINT_DIR).expanduser()


def _local_registry_path() -> Path:
    return checkpoint_dir() / LOCAL_REGISTRY


def _local() -> list[CheckpointSpec]:
    path = _local_registry_path()
    if not path.exists():
        return []
    try:
        rows = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as exc:
        raise TransferbenchError(f"cannot read {path} ({exc.__class__.__name__}); fix or delete it") from None
    if not isinstance(rows, list):
        raise TransferbenchError(f"{path} must hold a list of checkpoint entries; fix or delete it")
    return [CheckpointSpec.from_row(row, str(path), "local") for row in rows]


def list_checkpoints(include_local: bool = True) -> list[CheckpointSpec]:
    """Published checkpoints, then (if ``include_local``) the user's registered ones."""
    return [*_table(), *(_local() if include_local else [])]


def _arch_matches(spec: CheckpointSpec, arch: str) -> bool:
    # A family name (resnet50, mobilenet) selects every variant of it; a variant name selects only itself.
    return spec.family == arch if arch_family(arch) == arch else spec.arch == arch


def lookup_checkpoint(method: str, sparsity: float | int | str, arch: str | None = None) -> CheckpointSpec | None:
    """The registered checkpoint of ``method`` (aliases resolved as ``method_for_arch`` does) at ``sparsity`` for
    ``arch``, or None when there is none (as ``find_checkpoint``, without the error; an ambiguous alias still
    raises)."""
    target, arch = normalize_sparsity(sparsity), arch or DEFAULT_FAMILY
    rows = [*reversed(_local()), *_table()]
    here = {s.method for s in rows if _arch_matches(s, arch)}
    if not method_matches(method, here):
        return None
    method = resolve_method(method, here, where=f" for {arch}")
    return next((s for s in rows if s.method == method and _arch_matches(s, arch) and s.trained_for is None
                 and abs(s.sparsity - target) < _SPARSITY_TOLERANCE), None)


def method_for_arch(method: str, arch: str | None = None, trainable: Iterable[str] = ()) -> str:
    """The method name that ``method`` (as typed: ``rigl``, ``lth``, ``LTH-T``) stands for with ``arch`` (default:
    the resnet50 family), among the methods registered for it and ``trainable`` (the recipe entries a command can
    train there): the one resolution every command uses (vocabulary.resolve_method). An alias matching several
    (``rigl`` on resnet50: rigl_erk1x, rigl_erk5x) is a one-line choice; a name registered only for other
    architectures names them (--arch); an unknown one lists the known methods."""
    arch = arch or DEFAULT_FAMILY
    rows = [*_local(), *_table()]
    here = {s.method for s in rows if _arch_matches(s, arch)} | set(trainable)
    if method_matches(method, here):
        return resolve_method(method, here, where=f" for {arch}")
    meanings = set(method_matches(method, {s.method for s in rows}))
    if elsewhere := sorted({s.arch for s in rows if s.method in meanings}):
        raise TransferbenchError(f"no '{method}' checkpoint for arch '{arch}'; '{method}' exists for: "
                                 f"{', '.join(elsewhere)} (--arch)")
    return resolve_method(method, here | {s.method for s in rows})  # raises: unknown, with the known ones


def find_checkpoint(method: str, sparsity: float | int | str, arch: str | None = None,
                    trained_for: str | None = None) -> CheckpointSpec:
    """The checkpoint of ``method`` (a registered name or an alias, ``method_for_arch``) at ``sparsity`` (0.9 or
    90) for ``arch`` (default: the resnet50 family): an upstream (ImageNet-like) model, or with ``trained_for`` a
    model trained here on that multi-label task (``CheckpointSpec.trained_for``).

    User-registered checkpoints (``local.yaml``) take precedence, the most recently registered first.
    """
    target = normalize_sparsity(sparsity)
    arch = arch or DEFAULT_FAMILY
    method = method_for_arch(method, arch)
    for_arch = [s for s in [*reversed(_local()), *_table()]
                if s.method == method and _arch_matches(s, arch) and s.trained_for == trained_for]
    for spec in for_arch:
        if abs(spec.sparsity - target) < _SPARSITY_TOLERANCE:
            return spec
    available = sorted({s.sparsity for s in for_arch})
    raise TransferbenchError(
        f"no '{method}' checkpoint at {format_sparsity(target)} sparsity for '{arch}'"
        + (f" trained for {trained_for}" if trained_for else "")
        + f"; available: {', '.join(format_sparsity(s) for s in available) or 'none'} (--sparsity)"
        + (f"; train one with `transferbench upstream --dataset {trained_for} ...`" if trained_for else "")
    )


def named_checkpoint(name: str) -> CheckpointSpec | None:
    """The row called ``name``: the user's newest registration of it, else the published one; None if none."""
    return next((s for s in [*reversed(_local()), *_table()] if s.name == name), None)


def oneshot_source(spec: CheckpointSpec) -> CheckpointSpec:
    """The dense row a one-shot row is pruned from (its ``oneshot_from``)."""
    source = named_checkpoint(spec.oneshot_from) if spec.oneshot_from else None
    if source is None or source.oneshot or source.sparsity != 0.0:
        raise TransferbenchError(f"{spec.label} is pruned one-shot from {spec.oneshot_from!r}, which is not a dense "
                                 "registered checkpoint; fix the row's oneshot_from")
    return source


def file_identity(name: str | None, digest: str) -> str:
    """How a checkpoint file is identified, as a run's checkpoint identity and as the ``pruned_from`` of a one-shot
    candidate: ``NAME@sha256:HEX`` for a registry row's file, ``sha256:HEX`` for a file no row names."""
    return f"{name}@sha256:{digest}" if name else f"sha256:{digest}"


def pruned_from_source(candidate: CheckpointSpec, source: CheckpointSpec) -> bool:
    """Whether ``candidate`` was pruned from ``source``'s file: the same digest where the row knows its sha256
    (whatever name or path the file was given under), else the same row."""
    match = _SOURCE_IDENTITY.match(candidate.pruned_from or "")
    if match is None:
        return False
    if source.sha256:
        return match["digest"].startswith(source.sha256)
    return match["name"] == source.name


def prepared_candidate(spec: CheckpointSpec) -> CheckpointSpec | None:
    """The one-shot row ``spec``'s prepared checkpoint: the newest registered candidate pruned from its dense row's
    file at its sparsity, for its method and arch, whose file is still there; None when there is none."""
    source = oneshot_source(spec)
    return next((c for c in reversed(_local())
                 if pruned_from_source(c, source) and c.method == spec.method and c.arch == spec.arch
                 and abs(c.sparsity - spec.sparsity) < _SPARSITY_TOLERANCE and c.path and Path(c.path).is_file()),
                None)


def _torch_hub_dir() -> Path:
    """torch's hub directory without importing torch for it (listings stay fast): ``torch.hub.get_dir()`` when
    torch is loaded already, else its documented default ($TORCH_HOME/hub, $XDG_CACHE_HOME/torch/hub,
    ~/.cache/torch/hub)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "torch"
    return Path(torch_home).expanduser() / "hub"


def checkpoint_file(spec: CheckpointSpec, directory: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """(where the file of ``spec`` is, or is expected, whether it is there): its registered path (local.yaml), else
    ``filename`` in ``directory`` (default ``checkpoint_dir()``), else in torch's hub cache, where torchvision keeps
    an already-downloaded dense ResNet-50."""
    if spec.path:
        return Path(spec.path), Path(spec.path).is_file()
    folder = Path(directory).expanduser() if directory is not None else checkpoint_dir()
    path = folder / spec.filename
    if path.is_file():
        return path, True
    hub_file = _torch_hub_dir() / "checkpoints" / spec.filename
    return (hub_file, True) if hub_file.is_file() else (path, False)


def local_path(spec: CheckpointSpec, directory: str | os.PathLike | None = None) -> Path:
    """The file of ``spec`` on this machine, or a TransferbenchError saying where to put it and where to get it."""
    path, present = checkpoint_file(spec, directory)
    if present:
        return path
    if spec.path:
        raise TransferbenchError(
            f"checkpoint {spec.label} was registered at {path}, which no longer exists; add it again "
            f"({add_command(spec)}) or pass --checkpoint PATH"
        )
    where = f"expected {path} (another directory: --checkpoint-dir or ${ENV_CHECKPOINTS})"
    if spec.url is None:
        raise TransferbenchError(
            f"checkpoint {spec.label} is not publicly available; {where}. {spec.obtain or 'Get it from its authors'}; "
            f"add your copy with {add_command(spec)}, or pass --checkpoint PATH"
        )
    how = f"run `transferbench checkpoints fetch {spec.name}` (downloads {spec.url} and checks it)"
    raise TransferbenchError(f"checkpoint {spec.label} not found: {where}; {how}, or pass --checkpoint PATH")


def add_command(spec: CheckpointSpec, path: str = "FILE") -> str:
    """The `checkpoints add` command that registers one's own file as ``spec``'s."""
    return (f"`transferbench checkpoints add {path} --method {spec.method} --sparsity {spec.sparsity:g} "
            f"--arch {spec.arch}`")


def register_local(spec: CheckpointSpec, path: str | os.PathLike) -> CheckpointSpec:
    """Record ``path`` as the file of ``spec`` in ``<checkpoint_dir>/local.yaml`` (atomically).

    The file's sha256 is computed and stored (a known digest or prefix in ``spec`` must match). An entry with
    the same name is replaced. Returns the registered spec, which ``find_checkpoint`` now prefers.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise TransferbenchError(f"cannot register {file}: no such file")
    from ..models import model_class  # torchvision: only when a file is registered

    model_class(spec.arch)  # unknown arch → TransferbenchError listing the known ones
    digest = sha256_file(file)
    expected = normalize_sha256(spec.sha256, spec.name)
    if expected and not digest.startswith(expected):
        raise TransferbenchError(
            f"cannot register {file} as {spec.label}: its sha256 {digest[:16]}… does not match {expected}"
        )
    registered = replace(
        spec,
        sparsity=normalize_sparsity(spec.sparsity),
        sha256=digest,
        filename=file.name,
        path=str(file),
        source="local",
    )
    lock_path = _local_registry_path().with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:  # concurrent registrations (e.g. a job array) must not drop each other
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = [s for s in _local() if s.name != registered.name] + [registered]
        rows = [{k: v for k, v in s.to_dict().items() if k != "source"} for s in entries]
        write_bytes(_local_registry_path(), yaml.safe_dump(rows, sort_keys=False, allow_unicode=True).encode())
    return registered
