"""Sweeps and cluster profiles are YAML files named either by a packaged name (``mini``, ``default``) or by a path.

One lookup serves both, so the two commands resolve names, report missing files and bad YAML the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import TransferbenchError


@dataclass(frozen=True)
class NamedYaml:
    """Where a packaged kind of file lives and how messages call it."""

    kind: str  # "sweep", "profile"
    package: str  # the package holding the shipped files
    shown_as: str  # the folder messages name for a shipped file (the source tree's path)
    flag: str = ""  # the command-line flag that takes the name, for messages
    see: str = ""  # where the format is documented, for messages

    def names(self) -> list[str]:
        return sorted(p.name[:-5] for p in resources.files(self.package).iterdir() if p.name.endswith(".yaml"))

    def load(self, name_or_path: str | Path) -> tuple[Any, str, str]:
        """(parsed YAML, origin for messages, name): a path when it looks like one or exists, else a shipped file."""
        flag = f" ({self.flag})" if self.flag else ""
        path = Path(str(name_or_path)).expanduser()
        if path.suffix in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise TransferbenchError(f"{self.kind} file {path} does not exist{flag}")
            text, origin, name = path.read_text(), str(path), path.stem
        else:
            entry = resources.files(self.package) / f"{name_or_path}.yaml"
            if not entry.is_file():
                see = f" (see {self.see})" if self.see else ""
                raise TransferbenchError(f"unknown {self.kind} '{name_or_path}'{flag}: pass a {self.kind} .yaml file "
                                         f"or one of {', '.join(self.names())}{see}")
            text, origin, name = entry.read_text(), f"{self.shown_as}/{name_or_path}.yaml", str(name_or_path)
        try:
            return yaml.safe_load(text), origin, name
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise TransferbenchError(f"{self.kind} {origin} is not valid YAML{where}: fix the file") from None
