"""The one loader of shipped YAML (task cards, the checkpoint table, recipes, sweeps, profiles): where the files
are, that packaging ships them, and its one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from transferbench import shipped
from transferbench.cli import main
from transferbench.dispatch import load_profile, load_sweep
from transferbench.errors import TransferbenchError
from transferbench.upstream import load_recipe

REPO = Path(__file__).resolve().parents[1]
SOME_NAME = {"task": "cifar10", "checkpoints": "table", "recipe": "small_cpu", "sweep": "mini", "profile": "default"}
LOADERS = {"recipe": load_recipe, "sweep": load_sweep, "profile": load_profile}


@pytest.mark.parametrize("kind", sorted(shipped.KINDS))
def test_each_kind_names_the_folder_of_the_source_tree_that_holds_its_files(kind):
    folder = REPO / shipped.KINDS[kind].folder
    assert shipped.names(kind) == sorted(p.stem for p in folder.glob("*.yaml"))
    data, origin, name = shipped.load(kind, SOME_NAME[kind])
    assert data and name == SOME_NAME[kind] and REPO / origin == folder / f"{name}.yaml"


def test_the_wheel_ships_every_yaml_file_of_every_kind():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for kind in shipped.KINDS.values():
        package = kind.package
        assert package in setuptools["packages"], package
        source = setuptools.get("package-dir", {}).get(package, package.replace(".", "/"))
        assert source == kind.folder, (package, source)
        assert "*.yaml" in setuptools["package-data"][package], package
        assert (REPO / source / "__init__.py").is_file(), f"{source} must be a package for setuptools to ship it"


@pytest.mark.parametrize("kind", ["recipe", "sweep", "profile"])
def test_an_unknown_name_lists_the_shipped_ones(kind):
    with pytest.raises(TransferbenchError) as err:
        LOADERS[kind]("no_such_name")
    message = str(err.value)
    assert message.startswith(f"unknown {kind} 'no_such_name'") and "\n" not in message
    assert ", ".join(shipped.names(kind)) in message and len(shipped.names(kind)) >= 2


@pytest.mark.parametrize(("kind", "flag"), [("recipe", " (--recipe)"), ("sweep", ""), ("profile", " (--profile)")])
def test_a_missing_file_is_one_line_naming_it(kind, flag, tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(TransferbenchError) as err:
        LOADERS[kind](missing)
    assert str(err.value) == f"{kind} file {missing} does not exist{flag}"


@pytest.mark.parametrize("kind", ["recipe", "sweep", "profile"])
def test_invalid_yaml_names_the_file_and_its_line(kind, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [1, 2\n")
    with pytest.raises(TransferbenchError) as err:
        LOADERS[kind](bad)
    assert str(err.value) == f"{kind} {bad} is not valid YAML (line 3): fix the file"


@pytest.mark.parametrize("kind", ["recipe", "sweep", "profile"])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(kind, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(TransferbenchError) as err:
        LOADERS[kind](latin1)
    assert str(err.value) == f"{kind} {latin1} is not UTF-8 text (byte 9): save it as UTF-8"


def test_the_command_line_reports_loader_errors_as_one_line(tmp_path, capsys):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: caf\xe9\n")
    assert main(["sweep", str(latin1), "--dry-run", "--results", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: sweep {latin1} is not UTF-8 text (byte 9): save it as UTF-8\n"
    assert main(["upstream", "--method", "gmp", "--sparsity", "0.8", "--recipe", "nope", "--out",
                 str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'nope' (--recipe)" in err and "small_cpu" in err


def test_a_path_without_yaml_suffix_is_read_when_it_exists_but_shipped_files_never_come_from_the_cwd(
        tmp_path, monkeypatch):
    own = tmp_path / "mine"
    own.write_text("partition: cpu\n")
    assert shipped.load("profile", own) == ({"partition": "cpu"}, str(own), "mine")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table").write_text("- not the shipped table\n")
    rows, origin, _ = shipped.load_shipped("checkpoints", "table")
    assert origin == "transferbench/shipped/checkpoints/table.yaml" and len(rows) > 10


def test_an_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="one of task, checkpoints, recipe, sweep, profile"):
        shipped.names("cards")


def test_reading_shipped_yaml_does_not_import_torch():
    import subprocess

    code = ("import sys; from transferbench import shipped; "
            "[shipped.load(k, n) for k in shipped.KINDS for n in shipped.names(k)]; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
