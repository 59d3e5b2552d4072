"""What a wheel ships: every package of the source tree is listed in pyproject.toml (setuptools' list is explicit,
so a new package left out installs from a checkout but is missing from a wheel)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = set(config.get("package-dir", {}))
    in_tree = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "transferbench").rglob("__init__.py")}
    assert in_tree - mapped <= listed, f"not listed in pyproject.toml: {sorted(in_tree - mapped - listed)}"
    assert mapped <= listed
