"""Every YAML file the package ships, found by kind and name, and the one way to read one.

A kind is a folder of ``<name>.yaml`` files inside the package ``transferbench.shipped.<kind>``, so a wheel and a
checkout find the same files. Task cards and cluster profiles live in the repository's top-level ``tasks/`` and
``slurm/`` and are mapped into the package by pyproject.toml; the rest live in ``transferbench/shipped/``.

``load(kind, "mini")`` reads a shipped file; ``load(kind, "my.yaml")`` reads the user's. Either way a missing file,
an unknown name, a file that is not UTF-8, invalid YAML and a user's file that is not a mapping are one-line
TransferbenchErrors.
Torch-free, so the report can read cards and the checkpoint table without importing the registries.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import TransferbenchError
from ..names import is_name

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Kind:
    """Where one kind of shipped file lives and how messages call it."""

    noun: str  # how messages call one file: "task card", "sweep"
    package: str  # the package holding the shipped files
    folder: str  # the folder in the source tree, which messages name (a wheel has no such folder)
    see: str = ""  # where the format is documented, for messages


KINDS: dict[str, Kind] = {
    "task": Kind("task card", "transferbench.shipped.tasks", "tasks"),
    "checkpoints": Kind("checkpoint table", "transferbench.shipped.checkpoints", "transferbench/shipped/checkpoints"),
    "recipe": Kind("recipe", "transferbench.shipped.recipes", "transferbench/shipped/recipes"),
    "sweep": Kind("sweep", "transferbench.shipped.sweeps", "transferbench/shipped/sweeps"),
    "profile": Kind("profile", "transferbench.shipped.slurm", "slurm", see="slurm/README.md"),
}


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped file {kind!r}; one of {', '.join(KINDS)}")
    return KINDS[kind]


def names(kind: str) -> list[str]:
    """The shipped files of a kind, by name (file name without ``.yaml``), sorted."""
    entries = resources.files(_kind(kind).package).iterdir()
    return sorted(e.name[: -len(".yaml")] for e in entries if e.name.endswith(".yaml"))


def load(kind: str, name_or_path: str | Path, flag: str = "") -> tuple[Any, str, str]:
    """(parsed YAML, origin for messages, name) of a YAML file or a shipped one.

    ``name_or_path`` is a path when it ends in .yaml/.yml or names an existing file, else a shipped name.
    ``flag`` is the command-line flag that took it, named in messages.
    """
    path = Path(str(name_or_path)).expanduser()
    if path.suffix in YAML_SUFFIXES or path.is_file():
        noun, flagged = _kind(kind).noun, f" ({flag})" if flag else ""
        if not path.is_file():
            raise TransferbenchError(f"{noun} file {path} does not exist{flagged}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TransferbenchError(f"cannot read {noun} file {path}{flagged}: {exc.strerror}") from None
        parsed = _parse(kind, data, str(path))
        if not isinstance(parsed, dict):  # every user file (sweep, profile, recipe) is key: value lines
            shape = "a list" if isinstance(parsed, list) else "one value"
            what = "empty" if parsed is None else f"{shape}, not a mapping"
            raise TransferbenchError(f"{noun} file {path}{flagged} is {what}: write it as `key: value` lines"
                                     f"{f' (see {_kind(kind).see})' if _kind(kind).see else ''}")
        return parsed, str(path), path.stem
    return load_shipped(kind, str(name_or_path), flag)


def load_shipped(kind: str, name: str, flag: str = "") -> tuple[Any, str, str]:
    """(parsed YAML, origin for messages, name) of the shipped file ``name``; never a file of the working directory."""
    spec = _kind(kind)
    entry = resources.files(spec.package) / f"{name}.yaml"
    if not is_name(name) or not entry.is_file():  # a name with '/' or '..' would read a file outside the package
        flagged = f" ({flag})" if flag else ""
        see = f" (see {spec.see})" if spec.see else ""
        raise TransferbenchError(f"unknown {spec.noun} '{name}'{flagged}: pass a {spec.noun} .yaml file "
                                 f"or one of {', '.join(names(kind))}{see}")
    origin = f"{spec.folder}/{name}.yaml"
    return _parse(kind, entry.read_bytes(), origin), origin, name


def _parse(kind: str, data: bytes, origin: str) -> Any:
    noun = _kind(kind).noun
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TransferbenchError(f"{noun} {origin} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise TransferbenchError(f"{noun} {origin} is not valid YAML{where}: fix the file") from None


__all__ = ["KINDS", "Kind", "load", "load_shipped", "names"]
