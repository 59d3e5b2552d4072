"""Issue #15 point 2: every name that becomes part of a path is an identifier (one pattern, transferbench.names),
and every path the store, the upstream trainer and `checkpoints fetch` write resolves inside its root.

The reproductions go through the real CLI and compare a snapshot of the whole temporary tree (the results root,
its parent and the checkpoint directory) before and after: a refused command exits 2 with one `error:` line and
leaves nothing, outside the results root or inside it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from fixtures_models import write_pruned_checkpoint

from transferbench import shipped
from transferbench.checkpoints import CheckpointSpec, list_checkpoints, registry
from transferbench.checkpoints.fetch import fetch_checkpoint, sources
from transferbench.cli import main
from transferbench.errors import TransferbenchError
from transferbench.names import MAX_NAME_LENGTH, check_component, check_name, inside, is_name, name_from
from transferbench.store import claim_path, failure_path, feature_cache_dir, record_dir, work_dir, write_record
from transferbench.store.layout import lock_path, result_path
from transferbench.tasks import list_tasks
from transferbench.upstream import load_recipe

ESCAPE = "../../../../escaped_run"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file, folder and link under ``root`` (links not followed): relative path → (size, mtime_ns)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size if not path.is_dir() else 0, stat.st_mtime_ns)
    return found


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    """Exit status and the stderr lines that are not log lines (those start with a timestamp)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if not line[:4].isdigit()]


def assert_refused(code: int, lines: list[str], *words: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    assert "is not a name" in lines[0] or "single file name" in lines[0], lines
    for word in words:
        assert word in lines[0], (word, lines)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """tmp/deep/O (the results root, four levels under tmp: where ESCAPE lands), tmp/ckpts (the checkpoint
    directory) and tmp/good.pth, a dense resnet_tiny file."""
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    good = tmp_path / "good.pth"
    write_pruned_checkpoint(good, sparsity=0.0)
    return SimpleNamespace(tmp=tmp_path, results=tmp_path / "a" / "b" / "O", good=good)


# ------------------------------------------------------------------------------------------------ the pattern


@pytest.mark.parametrize("name", ["a.b-c_1", "acdc", "rigl_erk1x", "resnet50", "0", "_private", "a..b", "trail.",
                                  "LTH-T", "x" * MAX_NAME_LENGTH])
def test_identifiers_are_names(name):
    assert is_name(name) and check_name(name, "--method") == name


@pytest.mark.parametrize("name", [
    ".hidden", ".", "..", "a/b", "../x", "a\\b", "", "a b", "é", "café", "a\0b", "x" * (MAX_NAME_LENGTH + 1),
    "x" * 300, "-flag", "a\n", "tab\t", "a:b", "a*b", "~user",
])
def test_everything_else_is_refused_with_the_flag_and_the_fix(name):
    """Non-ASCII letters are refused on purpose (names.py: macOS decomposes them, so a key read back differs);
    a leading '-' too (it would read as a flag in the commands we print)."""
    assert not is_name(name)
    with pytest.raises(TransferbenchError, match=r"^--method .* is not a name: use letters, digits, '\.', '_' or "
                                                 r"'-' \(ASCII, at most 100 characters, not starting with '\.' or "
                                                 r"'-'\)$"):
        check_name(name, "--method")


@pytest.mark.parametrize("value", [None, 5, ["a"], b"abc"])
def test_a_name_is_a_string(value):
    assert not is_name(value)
    with pytest.raises(TransferbenchError, match="is not a name"):
        check_name(value, "sweep s.yaml: checkpoint method")


@pytest.mark.parametrize(("text", "expected"), [("my model (1)", "my_model_1_"), (".hidden", "hidden"),
                                                ("-x", "x"), ("café", "caf_"), ("...", "file"), ("ok.v2", "ok.v2")])
def test_name_from_makes_a_file_stem_a_name(text, expected):
    assert name_from(text) == expected and is_name(expected)


def test_every_shipped_name_is_a_name():
    """The registry rows, tasks, recipes and sweeps we ship pass the pattern, so checking it refuses no shipped
    input (and a future row that does not fails here, not in a user's run)."""
    assert all(is_name(t.name) for t in list_tasks(None))
    for spec in list_checkpoints(include_local=False):
        assert all(is_name(v) for v in (spec.name, spec.method, spec.arch, spec.filename)), spec
    for kind in ("sweep", "recipe", "task"):
        assert all(is_name(n) for n in shipped.names(kind)), kind
    for recipe in shipped.names("recipe"):
        rec = load_recipe(recipe)
        assert all(is_name(v) for v in (rec["name"], rec["arch"], *rec["methods"])), recipe


# ------------------------------------------------------------------------------------------------ containment


def test_a_key_that_is_not_one_file_name_is_refused_by_every_layout_function(tmp_path):
    for key in ("../x", "a/b", "..", ".", "", "a\0b", "k" * 256):
        for where in (record_dir, work_dir, failure_path, claim_path, lock_path, result_path):
            with pytest.raises(TransferbenchError, match="run key"):
                where(tmp_path, key)
    assert record_dir(tmp_path, "a b") == tmp_path / "runs" / "a b"  # a stray folder of another name is read


def test_write_record_refuses_a_key_that_escapes_even_if_no_caller_checked_it(tmp_path):
    """The second line of defence: a record whose key was never validated writes nothing anywhere."""
    root = tmp_path / "deep" / "O"
    root.mkdir(parents=True)
    before = snapshot(tmp_path)
    record = SimpleNamespace(run_key=f"digits.{ESCAPE}0.resnet_tiny.linear.s21.abc")
    with pytest.raises(TransferbenchError, match="single file name"):
        write_record(root, record, torch.zeros(2, 3).numpy(), torch.zeros(2).numpy())
    assert snapshot(tmp_path) == before


def test_a_run_folder_that_is_a_symlink_out_of_the_results_root_is_refused(tmp_path):
    root, outside = tmp_path / "O", tmp_path / "elsewhere"
    (root / "runs").mkdir(parents=True)
    (root / "work").mkdir()
    outside.mkdir()
    (root / "runs" / "k1").symlink_to(outside)
    (root / "work" / "k1").symlink_to(outside)
    (root / "cache").symlink_to(outside)
    for where in (record_dir, work_dir, claim_path, lock_path):
        with pytest.raises(TransferbenchError, match=r"resolves to .*elsewhere.*outside the results root"):
            where(root, "k1")
    with pytest.raises(TransferbenchError, match="outside the results root"):
        feature_cache_dir(root)
    (root / "runs" / "k2").symlink_to(root / "runs" / "k3")  # a link that stays inside is fine
    assert record_dir(root, "k2") == root / "runs" / "k2"


def test_inside_follows_links_in_the_root_too(tmp_path):
    real = tmp_path / "real"
    (real / "runs").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)  # a results root that is itself a link: its paths are inside it
    assert record_dir(link, "k") == link / "runs" / "k"
    assert inside(link, link / "runs" / "k" / "result.json") == link / "runs" / "k" / "result.json"
    with pytest.raises(TransferbenchError, match="outside the folder"):
        inside(real / "runs", real / "runs" / ".." / "x")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(TransferbenchError):
        inside(tmp_path, loop / "x")


def test_check_component_names_the_key_and_the_fix():
    with pytest.raises(TransferbenchError, match=r"^run key '\.\./x' is not a single file name: it would leave "):
        check_component("../x", "run key")


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize(("flags", "word"), [
    (["--method", ESCAPE], "--method"),
    (["--method", ".hidden"], "--method"),
    (["--method", "a b"], "--method"),
    (["--method", "m", "--arch", "../resnet_tiny"], "--arch"),
])
def test_run_with_a_name_that_is_not_one_writes_nothing_anywhere(world, capsys, flags, word):
    before = snapshot(world.tmp)
    code, lines = run_cli(capsys, "run", "--task", "digits", "--checkpoint", world.good, "--sparsity", "0",
                          *flags, "--results", world.results)
    assert_refused(code, lines, word)
    assert snapshot(world.tmp) == before


def test_run_with_a_checkpoint_that_names_an_arch_which_is_not_a_name(world, capsys):
    """The arch read from the file itself (its model_config) becomes part of the run key too."""
    blob = torch.load(world.good, weights_only=True)
    blob["model_config"] = {"arch": "../../resnet_tiny"}
    torch.save(blob, world.good)
    before = snapshot(world.tmp)
    code, lines = run_cli(capsys, "run", "--task", "digits", "--checkpoint", world.good, "--sparsity", "0",
                          "--results", world.results)
    assert_refused(code, lines, "good.pth names its architecture as '../../resnet_tiny'")
    assert snapshot(world.tmp) == before


def _sweep_file(world, **checkpoint) -> Path:
    path = world.tmp / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "tasks": ["digits"], "modes": ["linear"], "seeds": [21],
        "checkpoints": [{"method": "dense", "sparsity": 0, "path": str(world.good), "arch": "resnet_tiny",
                         **checkpoint}]}))
    return path


@pytest.mark.parametrize("command", [["sweep", "--executor", "debug"], ["sweep", "--dry-run"], ["status"]])
@pytest.mark.parametrize(("field", "value"), [("method", ESCAPE), ("arch", "../x")])
def test_a_sweep_file_with_a_checkpoint_name_that_is_not_one(world, capsys, command, field, value):
    """The reproduction: with `path:`, the method went into the run key unchanged; now the file is refused."""
    sweep = _sweep_file(world, **{field: value})
    before = snapshot(world.tmp)
    code, lines = run_cli(capsys, command[0], sweep, *command[1:], "--results", world.results)
    assert_refused(code, lines, f"sweep {sweep}: checkpoint {field} '{value}'")
    assert snapshot(world.tmp) == before


@pytest.mark.parametrize(("flags", "word"), [
    (["--method", "acdc", "--arch", "resnet_tiny", "--name", "../../escaped"], "--name"),
    (["--method", "a/b", "--arch", "resnet_tiny"], "--method"),
    (["--method", "acdc", "--arch", ".."], "--arch"),
    (["--method", "m" * 99, "--arch", "resnet_tiny"], "the row's name"),  # the default name would be too long
])
def test_checkpoints_add_with_a_name_that_is_not_one(world, capsys, flags, word):
    before = snapshot(world.tmp)
    code, lines = run_cli(capsys, "checkpoints", "add", world.good, "--sparsity", "0", *flags)
    assert_refused(code, lines, word)
    assert snapshot(world.tmp) == before and not (world.tmp / "ckpts").exists()


def test_upstream_with_a_recipe_whose_name_would_leave_the_out_folder(world, capsys):
    recipe = load_recipe("small_cpu")
    recipe["name"] = "../../../escaped"
    path = world.tmp / "evil.yaml"
    path.write_text(yaml.safe_dump(recipe))
    before = snapshot(world.tmp)
    code, lines = run_cli(capsys, "upstream", "--method", "magnitude", "--sparsity", "0.5", "--recipe", path,
                          "--out", world.results / "up", "--device", "cpu")
    assert_refused(code, lines, "recipe '../../../escaped': the checkpoint name")
    assert snapshot(world.tmp) == before


def test_a_shipped_name_with_a_path_in_it_is_unknown(capsys):
    with pytest.raises(TransferbenchError, match=r"unknown sweep '\.\./sweeps/demo'"):
        shipped.load_shipped("sweep", "../sweeps/demo")


# ------------------------------------------------------------------------------------------------ the registry


def test_a_registry_row_whose_names_are_not_names_is_refused_naming_the_file(world):
    folder = world.tmp / "ckpts"
    folder.mkdir()
    rows = [{"name": "ok", "method": "acdc", "sparsity": 0.5, "arch": "resnet_tiny", "filename": "../../x.pth"}]
    (folder / "local.yaml").write_text(yaml.safe_dump(rows))
    with pytest.raises(TransferbenchError, match=r"local\.yaml: entry 'ok': filename '\.\./\.\./x\.pth' is not a "):
        list_checkpoints()
    rows[0].update(filename="x.pth", method="../acdc")
    (folder / "local.yaml").write_text(yaml.safe_dump(rows))
    with pytest.raises(TransferbenchError, match=r"entry 'ok': method '\.\./acdc' is not a name"):
        list_checkpoints()
    rows[0].update(method="acdc", filename="my file (1).pth", path=str(world.good))  # a path of one's own: any name
    (folder / "local.yaml").write_text(yaml.safe_dump(rows))
    assert [s.filename for s in list_checkpoints() if s.source == "local"] == ["my file (1).pth"]


@pytest.mark.parametrize("filename", ["..", "../escaped.pth", "a/../../b.pth"])
def test_fetch_never_writes_outside_the_checkpoint_directory(world, monkeypatch, filename):
    """A row built in code (not read from YAML, whose check comes first) whose file name would leave the
    directory, with a URL that ends in `..` or `%2F..`: refused before any connection or file."""
    spec = CheckpointSpec(name="evil", method="acdc", sparsity=0.5, arch="resnet_tiny", filename=filename,
                          url="http://127.0.0.1:9/a/%2F..")
    monkeypatch.setattr(registry, "_table", lambda: (spec,))
    before = snapshot(world.tmp)
    with pytest.raises(TransferbenchError, match=r"evil: filename .* is not a single file name"):
        fetch_checkpoint(spec, world.tmp / "ckpts")
    assert snapshot(world.tmp) == before


@pytest.mark.parametrize("location", ["owner/repo:../../x.pth", "owner/repo:a/../../x.pth", "owner/repo:/etc/x",
                                      "owner/repo@main:..\\x.pth"])
def test_a_hugging_face_mirror_path_that_climbs_is_refused(location):
    spec = CheckpointSpec(name="evil", method="acdc", sparsity=0.5, arch="resnet_tiny", mirrors=[{"hf": location}])
    with pytest.raises(TransferbenchError, match=r"without '\.\.'"):
        sources(spec)
    ok = CheckpointSpec(name="ok", method="acdc", sparsity=0.5, arch="resnet_tiny",
                        mirrors=[{"hf": "owner/repo@v1:weights/model..v2.pth"}])
    assert sources(ok) == [("hf", "owner/repo@v1:weights/model..v2.pth")]


def test_a_sweep_upstream_entry_whose_recipe_name_would_leave_the_upstream_folder(world, capsys):
    recipe = load_recipe("small_cpu")
    recipe["name"] = "../escaped"
    (world.tmp / "evil.yaml").write_text(yaml.safe_dump(recipe))
    sweep = _sweep_file(world)
    spec = yaml.safe_load(sweep.read_text())
    spec["upstream"] = [{"method": "magnitude", "sparsity": "50%", "recipe": str(world.tmp / "evil.yaml")}]
    sweep.write_text(yaml.safe_dump(spec))
    before = snapshot(world.tmp)
    code, lines = run_cli(capsys, "sweep", sweep, "--dry-run", "--results", world.results)
    assert_refused(code, lines, f"sweep {sweep}", "recipe '../escaped': the checkpoint name")
    assert snapshot(world.tmp) == before


def test_status_still_reads_a_store_holding_a_stray_file_of_another_name(tmp_path):
    """The strict pattern is for names given; the store's listing only has to be one file name each, so a
    `.DS_Store` or a folder with a space in it does not stop `status`."""
    from transferbench.store import run_states

    (tmp_path / "runs" / "notes on x").mkdir(parents=True)
    (tmp_path / "runs" / ".DS_Store").write_bytes(b"")
    states = run_states(tmp_path)
    assert set(states) == {"notes on x", ".DS_Store"}
    assert {s.state for s in states.values()} <= {"lost", "failed", "missing"}
