"""One vocabulary (#14): method names and aliases resolve the same way in every command, a sparsity is typed as 0.9
or 90% and printed one way, and a listing filter that names nothing is an error."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from transferbench.checkpoints.fetch import LOCK_FILE
from transferbench.checkpoints.listing import filter_checkpoints
from transferbench.checkpoints.registry import find_checkpoint, list_checkpoints, lookup_checkpoint, method_for_arch
from transferbench.cli import main
from transferbench.dispatch.stages import upstream_units
from transferbench.dispatch.sweep import load_sweep
from transferbench.errors import TransferbenchError
from transferbench.report.reference import read_reference
from transferbench.upstream.recipes import recipe_method
from transferbench.vocabulary import (
    format_sparsity,
    method_matches,
    normalize_sparsity,
    parse_sparsity,
    resolve_method,
)

# The registry's RigL rows (transferbench/shipped/checkpoints/table.yaml), written out by hand.
RIGL_ROWS = {f"resnet50_rigl_erk{m}x_{s}" for m in (1, 5) for s in (80, 90, 95)}
TRAINED_HERE = "trained by transferbench upstream (small_cpu recipe, shapes, seed 0)"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if not line[:4].isdigit()]  # log lines start with a timestamp
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def checkpoint_home(tmp_path, monkeypatch):
    """An empty checkpoint directory; ``add_local_rows`` writes its local.yaml."""
    home = tmp_path / "ckpts"
    home.mkdir()
    monkeypatch.setenv("TRANSFERBENCH_CHECKPOINTS", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no hub-cached file counts as on disk
    return home


def add_local_rows(home, *rows: dict) -> None:
    full = [{"arch": "resnet_tiny", "format": "ist", "notes": TRAINED_HERE, "upstream_top1": 91.5,
             "path": str(home / f"{row['name']}.pth"), **row} for row in rows]
    (home / "local.yaml").write_text(yaml.safe_dump(full))


# ------------------------------------------------------------------------------------------ method names


@pytest.mark.parametrize(("typed", "available", "expected"), [
    ("rigl", ["acdc", "rigl_erk1x", "rigl_erk5x"], ["rigl_erk1x", "rigl_erk5x"]),
    ("rigl", ["rigl", "rigl_erk1x"], ["rigl"]),          # a name registered where it is used means itself
    ("lth", ["acdc", "lth_t"], ["lth_t"]),
    ("LTH-T", ["lth_t"], ["lth_t"]),                     # case and '-' do not matter
    ("lth_t", ["acdc", "lth"], ["lth"]),                 # the recipes call LTH-T lth
    ("rigl_erk1x", ["rigl", "acdc"], ["rigl"]),          # the CPU recipe's rigl is the 1x recipe
    ("rigl_erk5x", ["rigl", "acdc"], []),                # no alias: the 5x run has no CPU counterpart
    ("snip", ["acdc"], []),
])
def test_method_matches_by_hand(typed, available, expected):
    assert method_matches(typed, available) == expected


def test_resolve_method_is_one_name_or_one_line_naming_the_choices():
    assert resolve_method("lth", ["acdc", "lth_t"]) == "lth_t"
    with pytest.raises(TransferbenchError) as ambiguous:
        resolve_method("rigl", ["rigl_erk5x", "rigl_erk1x", "acdc"], where=" for resnet50")
    assert str(ambiguous.value) == "--method rigl is ambiguous for resnet50: choose one of rigl_erk1x, rigl_erk5x"
    with pytest.raises(TransferbenchError, match=r"^unknown method 'snip' \(--method\); known: acdc, lth_t$"):
        resolve_method("snip", ["lth_t", "acdc"])


def test_the_registry_resolves_aliases_per_arch(checkpoint_home):
    assert find_checkpoint("lth", "90%").name == "resnet50_lth_t_90"
    assert find_checkpoint("LTH-T", 0.8, "resnet50").name == "resnet50_lth_t_80"
    assert lookup_checkpoint("lth", 0.95).name == "resnet50_lth_t_95"
    for arch in (None, "resnet50", "resnet50_rigl"):  # both variants exist for each of these
        with pytest.raises(TransferbenchError, match=r"--method rigl is ambiguous .*rigl_erk1x, rigl_erk5x$"):
            find_checkpoint("rigl", 0.9, arch)
    with pytest.raises(TransferbenchError, match=r"no 'rigl' checkpoint for arch 'mobilenet'; .*resnet50_rigl"):
        find_checkpoint("rigl", 0.9, "mobilenet")
    assert lookup_checkpoint("rigl", 0.9, "mobilenet") is None


def test_a_mini_suite_rigl_is_rigl_on_resnet_tiny_and_its_registered_name_wins(checkpoint_home):
    assert method_for_arch("rigl", "resnet_tiny", trainable=["rigl", "lth", "acdc"]) == "rigl"
    assert method_for_arch("lth_t", "resnet_tiny", trainable=["rigl", "lth", "acdc"]) == "lth"
    add_local_rows(checkpoint_home, {"name": "tiny_rigl_90", "method": "rigl", "sparsity": 0.9},
                   {"name": "tiny_lth_90", "method": "lth", "sparsity": 0.9})
    assert find_checkpoint("rigl", "90%", "resnet_tiny").name == "tiny_rigl_90"
    assert find_checkpoint("lth_t", 0.9, "resnet_tiny").name == "tiny_lth_90"
    with pytest.raises(TransferbenchError, match="ambiguous for resnet50"):  # resnet50 still has two RigLs
        find_checkpoint("rigl", 0.9)


def test_run_names_the_choices_before_looking_at_data(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--task", "cifar10", "--method", "rigl", "--sparsity", "90%",
                           "--results", tmp_path)
    one_error_line(code, err, "--method rigl is ambiguous for resnet50", "rigl_erk1x, rigl_erk5x")
    assert not (tmp_path / "runs").exists()


def test_upstream_reads_a_method_name_as_run_does():
    assert recipe_method("lth_t", "small_cpu") == "lth" and recipe_method("LTH-T", "imagenet_resnet50") == "lth"
    assert recipe_method("rigl", "imagenet_resnet50") == "rigl"  # an entry of its own: no choice to make
    assert recipe_method("rigl_erk5x", "imagenet_resnet50") == "rigl_erk5x"
    with pytest.raises(TransferbenchError, match=r"recipe small_cpu has no method 'rigl_erk5x' \(--method\)"):
        recipe_method("rigl_erk5x", "small_cpu")


def test_a_mini_sweep_trains_lth_t_as_the_recipes_lth(tmp_path, checkpoint_home):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "words", "arch": "resnet_tiny", "tasks": ["digits"], "modes": ["linear"],
                                     "seeds": {"linear": [21]},
                                     "checkpoints": [{"method": "lth_t", "sparsity": "80%"}]}))
    units, binding = upstream_units(load_sweep(sweep))
    [unit] = units
    assert unit.method == "lth" and unit.sparsities == (0.8,) and unit.products == ("resnet_tiny_lth_80_small_cpu_s0",)
    assert list(binding.values()) == ["resnet_tiny_lth_80_small_cpu_s0"]


# ------------------------------------------------------------------------------------------ sparsity


@pytest.mark.parametrize(("typed", "fraction"), [
    (0.9, 0.9), ("0.9", 0.9), ("90%", 0.9), (" 97.5% ", 0.975), ("0%", 0.0), (0, 0.0), ("89.26%", 0.8926),
])
def test_a_sparsity_is_a_fraction_or_an_explicit_percent(typed, fraction):
    assert parse_sparsity(typed) == fraction


@pytest.mark.parametrize(("typed", "message"), [
    ("95", "--sparsity 95 is ambiguous: write 0.95 or 95%"),
    (97.5, "--sparsity 97.5 is ambiguous: write 0.975 or 97.5%"),
    ("100%", "sparsity must be in [0, 1)"),
    ("1", "sparsity must be in [0, 1)"),
    ("-5%", "sparsity must be in [0, 1)"),
    ("ninety", "write a fraction like 0.9 or a percent like 90%"),
    ("nan", "write a fraction like 0.9 or a percent like 90%"),
])
def test_a_bare_number_above_one_or_nonsense_is_refused(typed, message):
    with pytest.raises(TransferbenchError) as refused:
        parse_sparsity(typed)
    assert message in str(refused.value)


def test_files_and_the_python_api_read_a_sparsity_as_the_flags_do():
    assert normalize_sparsity(0.9) == 0.9 and normalize_sparsity("80%") == 0.8 and parse_sparsity(None) is None
    with pytest.raises(TransferbenchError, match=r"sparsity 90 is ambiguous: write 0.9 or 90%"):
        normalize_sparsity(90)  # a bare percent is refused by the API and sweep files too, not guessed


@pytest.mark.parametrize(("fraction", "printed"), [
    (0.9, "90%"), (0.975, "97.5%"), (0.0, "0%"), (0.8926, "89.26%"), (0.89, "89%"), (0.5, "50%"),
])
def test_a_sparsity_is_printed_one_way(fraction, printed):
    assert format_sparsity(fraction) == printed


def test_every_registered_sparsity_printed_can_be_typed_back():
    for spec in list_checkpoints(include_local=False):
        assert abs(parse_sparsity(format_sparsity(spec.sparsity)) - spec.sparsity) < 5e-4, spec.name


@pytest.mark.parametrize("command", [
    ["run", "--task", "digits", "--method", "acdc", "--sparsity", "95"],
    ["upstream", "--method", "acdc", "--sparsity", "95"],
    ["upstream", "--method", "cram", "--sparsity", "0.5", "90"],
])
def test_a_bare_percent_on_the_command_line_is_one_line_and_no_work(capsys, tmp_path, checkpoint_home, command):
    code, _, err = run_cli(capsys, *command, "--out" if command[0] == "upstream" else "--results", tmp_path / "out")
    one_error_line(code, err, "write 0.", "or 9")
    assert not (tmp_path / "out").exists() and not any(checkpoint_home.iterdir())


# ------------------------------------------------------------------------------------------ listings


@pytest.mark.parametrize(("flags", "needles"), [
    (["--method", "nosuch"], ["unknown method 'nosuch' (--method); known: ", "acdc", "rigl_erk1x"]),
    (["--arch", "nosuch"], ["no checkpoint for arch 'nosuch' (--arch); known: ", "mobilenet", "resnet50"]),
    (["--method", "rigl", "--arch", "mobilenet"], ["no 'rigl' checkpoint for arch 'mobilenet'", "resnet50_rigl"]),
])
def test_a_filter_that_names_nothing_is_an_error_not_an_empty_table(capsys, checkpoint_home, flags, needles):
    code, out, err = run_cli(capsys, "checkpoints", "list", *flags)
    one_error_line(code, err, *needles)
    assert out == ""


def test_list_an_alias_lists_every_variant_and_json_parses(capsys, checkpoint_home):
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--method", "rigl", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["name"] for r in rows} == RIGL_ROWS
    row = next(r for r in rows if r["name"] == "resnet50_rigl_erk1x_90")
    assert row["sparsity"] == 0.9 and row["sparsity_text"] == "90%" and row["top1_on"] == "imagenet"
    assert row["on_disk"] is False and row["file"] == str(checkpoint_home / "resnet50_rigl_erk1x_90.pth")
    assert {"url", "sha256", "filename", "upstream_top1", "notes"} <= set(row)


def test_list_table_has_the_promised_columns_and_says_what_is_on_disk(capsys, checkpoint_home):
    (checkpoint_home / "resnet50_acdc_90.pth").write_bytes(b"weights")
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--method", "acdc", "--arch", "resnet50")
    header, *lines = out.splitlines()
    assert code == 0 and header.split() == ["method", "sparsity", "arch", "format", "upstream_top1", "top1_on",
                                            "name", "on_disk", "sha256", "file", "url"]
    cells = {line.split()[6]: line.split() for line in lines}
    assert set(cells) == {"resnet50_acdc_80", "resnet50_acdc_90", "resnet50_acdc_95", "resnet50_acdc_98"}
    assert cells["resnet50_acdc_90"][:6] == ["acdc", "90%", "resnet50", "ist", "75.03", "imagenet"]
    assert cells["resnet50_acdc_90"][7:10] == ["yes", "-", str(checkpoint_home / "resnet50_acdc_90.pth")]
    assert cells["resnet50_acdc_95"][7] == "no"


def test_list_shows_the_digest_recorded_on_first_download_and_another_directory(capsys, tmp_path,
                                                                                 checkpoint_home):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "resnet50_acdc_80.pth").write_bytes(b"weights")
    digest = "ab" * 32
    (elsewhere / LOCK_FILE).write_text(json.dumps({"resnet50_acdc_80.pth": {"sha256": digest, "size": 7}}))
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--method", "acdc", "--arch", "resnet50",
                           "--checkpoint-dir", elsewhere)
    cells = next(line.split() for line in out.splitlines() if "resnet50_acdc_80" in line)
    assert code == 0 and cells[7:10] == ["yes", "lock:" + digest[:12], str(elsewhere / "resnet50_acdc_80.pth")]
    code, out, _ = run_cli(capsys, "checkpoints", "show", "resnet50_acdc_80", "--json", "--checkpoint-dir", elsewhere)
    row = json.loads(out)
    assert row["sha256"] is None and row["sha256_recorded"] == digest and row["on_disk"] is True


def test_tasks_list_json_has_the_twelve_tasks_the_mini_tasks_and_the_bias_studys(capsys):
    code, out, _ = run_cli(capsys, "tasks", "list", "--json")
    tasks = {t["name"]: t for t in json.loads(out)}
    assert code == 0 and sum(t["kind"] == "paper" for t in tasks.values()) == 12
    assert {n for n, t in tasks.items() if t["kind"] == "mini"} == {"digits", "textures", "faces"}
    assert {n for n, t in tasks.items() if t["kind"] == "bias"} == {"celeba"}
    assert tasks["aircraft"]["num_classes"] == 100 and tasks["aircraft"]["metric"] == "mean_per_class"


def test_a_resnet_tiny_row_does_not_claim_imagenet(capsys, checkpoint_home):
    add_local_rows(checkpoint_home, {"name": "tiny_acdc_90", "method": "acdc", "sparsity": 0.9})
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--arch", "resnet_tiny")
    line = next(line for line in out.splitlines() if "tiny_acdc_90" in line)
    assert code == 0 and line.split()[4:7] == ["91.50", "shapes", "tiny_acdc_90"] and "imagenet" not in line
    assert "imagenet_top1" not in out and "synthetic shapes set" in out
    [row] = filter_checkpoints(arch="resnet_tiny")
    assert row.upstream_data == "shapes"


def test_show_gives_every_field_and_the_file(capsys, checkpoint_home):
    (checkpoint_home / "resnet50_acdc_90.pth").write_bytes(b"weights")
    code, out, _ = run_cli(capsys, "checkpoints", "show", "resnet50_acdc_90")
    row = yaml.safe_load(out)
    assert code == 0 and row["name"] == "resnet50_acdc_90" and row["method"] == "acdc" and row["sparsity"] == 0.9
    assert row["on_disk"] is True and row["file"] == str(checkpoint_home / "resnet50_acdc_90.pth")
    assert row["filename"] == "resnet50_acdc_90.pth" and row["upstream_top1"] == 75.03
    code, out, _ = run_cli(capsys, "checkpoints", "show", "resnet50_acdc_95", "--json")
    assert code == 0 and json.loads(out)["on_disk"] is False
    code, _, err = run_cli(capsys, "checkpoints", "show", "acdc_90_resnet")
    one_error_line(code, err, "no checkpoint named 'acdc_90_resnet'", "checkpoints list")


def test_a_reference_of_another_arch_is_named_with_the_printed_sparsity(tmp_path, caplog, monkeypatch):
    logger = logging.getLogger("transferbench")  # a CLI test before this one set it up for a closed stderr
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "handlers", [])
    path = tmp_path / "linear_transfer_results.txt"  # AC/DC at 30% exists for mobilenet only
    path.write_text("dset,model,sparsity,seed,val_acc\ncifar10,AC/DC,0.3,seed_21,0.9\n")
    read_reference(path, arch="resnet50")
    assert "e.g. acdc 30%; check --reference-arch" in caplog.text
