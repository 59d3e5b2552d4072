"""Start-up: `--help` of every command and the listings load no heavy library, and start within seconds.

The heavy libraries (torch, torchvision, pandas, scikit-learn, matplotlib, seaborn, submitit) cost seconds to
import on a 2-core machine; `transferbench --help` must not wait for them (issue #14: under 1.5 s; the figure is
measured by benchmarks/bench_startup.py, the wall-time check here keeps a margin for loaded CI machines).
Each check runs in a fresh interpreter: this test process has imported torch long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from transferbench.lazy import lazy_package

HEAVY = ("torch", "torchvision", "pandas", "sklearn", "matplotlib", "seaborn", "submitit")

# In a fresh interpreter: build the parser, run `--help` of the program and of every (nested) subcommand found
# in it, then the listings; after each, the heavy modules imported so far. One process for all: a module
# imported by any command stays in sys.modules, so a clean end means every command was clean.
_PROBE = textwrap.dedent("""
    import argparse, contextlib, io, json, sys
    from transferbench.cli import build_parser, main

    def commands(parser, path=()):
        yield [*path, "--help"]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*path, name))

    def heavy():
        return sorted(m for m in HEAVY if m in sys.modules)

    HEAVY = json.loads(sys.argv[1])
    after = {}
    for argv in [*commands(build_parser()), ["tasks", "list"], ["checkpoints", "list"]]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code
        after[" ".join(argv)] = {"code": code, "heavy": heavy(), "printed": len(out.getvalue())}
    print(json.dumps(after))
""")


def _first_loaded(after: dict[str, dict]) -> dict[str, str]:
    """Each heavy module the probe saw, with the first command after which it was loaded."""
    first: dict[str, str] = {}
    for command, result in after.items():  # in the order the commands ran
        for module in result["heavy"]:
            first.setdefault(module, command)
    return first


@pytest.fixture()
def clean_env(tmp_path):
    """An empty checkpoint directory (no local.yaml of the user's), so `checkpoints list` reads the shipped table."""
    return {**os.environ, "TRANSFERBENCH_CHECKPOINTS": str(tmp_path / "checkpoints")}


def test_help_and_listings_import_no_heavy_library(clean_env):
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(HEAVY)], capture_output=True, text=True,
                          env=clean_env, timeout=300, check=True)
    after = json.loads(done.stdout)
    # the probe found the nested commands (else it would prove nothing) and each printed its help or its table
    assert {"--help", "run --help", "sweep --help", "report beyond --help", "checkpoints list --help",
            "tasks list", "checkpoints list"} <= set(after)
    failed = {command: result for command, result in after.items() if result["code"] != 0 or not result["printed"]}
    assert not failed
    assert _first_loaded(after) == {}, "heavy imports at start-up (module: first command that loaded it)"


def test_the_probe_sees_a_heavy_import(clean_env):
    """The check above can fail: a command that imports pandas is reported by name."""
    probe = _PROBE.replace("code = main(argv)", "argv == ['tasks', 'list'] and __import__('pandas'); code = main(argv)")
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(HEAVY)], capture_output=True, text=True,
                          env=clean_env, timeout=300, check=True)
    assert _first_loaded(json.loads(done.stdout)) == {"pandas": "tasks list"}


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["checkpoints", "list"]])
def test_start_up_wall_time(argv, clean_env):
    """Best of three fresh processes, under 3 s (the benchmark measures ~0.4 s on 2 cores; the issue asks < 1.5 s):
    the margin absorbs a loaded CI machine, an import of torch (~5 s there) does not fit in it."""
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "transferbench", *argv], check=True, stdout=subprocess.DEVNULL,
                       env=clean_env, timeout=120)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 3.0, f"transferbench {' '.join(argv)}: {seconds}"


# --- transferbench.lazy: the package namespaces behind it ---

@pytest.fixture()
def lazy_pkg(tmp_path, monkeypatch):
    """A throwaway package whose __init__ is lazy, with a submodule named as the function it defines."""
    pkg = tmp_path / "lazypkg_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from transferbench.lazy import lazy_package\n"
        "lazy_package(__name__, {'.collect': ('collect', 'Collection'), '.other': ('helper',)})\n")
    (pkg / "collect.py").write_text("import sys\nsys.modules[__package__].imported_collect = True\n"
                                    "def collect():\n    return 'collected'\nclass Collection:\n    pass\n")
    (pkg / "other.py").write_text("def helper():\n    return 'helped'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazypkg_probe"
    for name in [m for m in sys.modules if m.split(".")[0] == "lazypkg_probe"]:
        del sys.modules[name]


def test_lazy_package_imports_a_name_on_first_use(lazy_pkg):
    import importlib

    module = importlib.import_module(lazy_pkg)
    assert f"{lazy_pkg}.collect" not in sys.modules and not hasattr(module, "imported_collect")
    assert {"collect", "Collection", "helper"} <= set(dir(module))
    assert module.helper() == "helped" and f"{lazy_pkg}.collect" not in sys.modules  # only its own submodule
    assert module.collect() == "collected" and module.imported_collect
    with pytest.raises(AttributeError, match=f"module '{lazy_pkg}' has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_a_public_name_stays_itself_when_its_namesake_submodule_is_imported(lazy_pkg):
    """`import pkg.collect` binds the submodule on the package; the public name `collect` stays the function, as an
    eager `from .collect import collect` left it (transferbench.report.collect is such a pair)."""
    import importlib

    importlib.import_module(f"{lazy_pkg}.collect")
    module = sys.modules[lazy_pkg]
    assert callable(module.collect) and module.collect() == "collected"
    namespace: dict = {}
    exec(f"from {lazy_pkg} import collect", namespace)
    assert namespace["collect"]() == "collected"


def test_report_collect_is_the_function_in_a_fresh_interpreter():
    code = ("import transferbench.report.collect, transferbench.report as r; "
            "from transferbench.report import collect; "
            "assert r.collect is collect and callable(collect) and collect.__name__ == 'collect', r.collect")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_name_exported_twice_is_refused(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "lazypkg_twice", types.ModuleType("lazypkg_twice"))
    with pytest.raises(ValueError, match="lazypkg_twice: run exported by more than one submodule"):
        lazy_package("lazypkg_twice", {".a": ("run", "stop"), ".b": ("run",)})
