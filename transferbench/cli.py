"""The `transferbench` command: a thin layer over the package's functions.

Each command parses its flags, calls the functions a user would call from Python (README, "Python API") and
prints what they return. ``--results`` names the results root in every command, ``--out`` an output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

import yaml

from .bounds import SEED, WORKERS, Bounds
from .cli_flags import add_results_flag
from .dispatch.cli import SHOW_WORDS, add_dispatch_commands
from .errors import TransferbenchError, describe_os_error, require_writable_folder
from .report.cli import add_report_commands
from .runspec import FEATURE_HPARAMS, MODES, HParams
from .tracking import add_log_flag, require_trackers
from .version import __version__

log = logging.getLogger("transferbench")


def _parse_set(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as overrides (values read as YAML; ``-`` in keys as ``_``)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TransferbenchError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:  # a tag (!!python/name:...) or broken YAML: refused, never constructed
            problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise TransferbenchError(f"--set {item}: not a plain YAML value ({problem}); give a number, a word or "
                                     "a list such as [30,60]") from None
    return overrides


def _flagged_hparams() -> list:
    return [f for f in fields(HParams) if f.metadata.get("flag")]


def _hparam_overrides(args: argparse.Namespace) -> dict:
    """The hyper-parameter overrides of a parsed `run`: ``--set`` pairs, then the flags given (a flag wins)."""
    overrides = _parse_set(args.set)
    overrides.update({f.name: getattr(args, f.name) for f in _flagged_hparams()
                      if getattr(args, f.name, None) is not None})  # `estimate` has the feature flags only
    return overrides


def _run_context(args: argparse.Namespace):
    """The RunContext of a parsed `run`: its flags are named as RunContext's fields (``--workers`` is
    ``num_workers``); a flag not given keeps the field's default."""
    from .context import RunContext

    return RunContext(**{f.name: getattr(args, f.name) for f in fields(RunContext)
                         if getattr(args, f.name, None) is not None})


def cmd_run(args: argparse.Namespace) -> int:
    from .resolve import resolve_spec
    from .runner import run_claimed
    from .store import existing_record, result_path
    from .vocabulary import parse_sparsity

    args.trackers = require_trackers(args.trackers)  # --log of a backend not installed: before any work
    SEED.check(args.seed, "--seed")
    WORKERS.check(args.num_workers, "--workers")
    spec = resolve_spec(args.task, args.mode, args.seed, method=args.method, sparsity=parse_sparsity(args.sparsity),
                        arch=args.arch,
                        checkpoint=args.checkpoint, checkpoint_dir=args.checkpoint_dir, data_root=args.data_root,
                        overrides=_hparam_overrides(args), train_missing=args.train_missing)
    if not args.force and existing_record(args.results, spec.run_key) is not None:
        print(f"already done: {result_path(args.results, spec.run_key)} (use --force to run it again)")
        return 0
    record = run_claimed(spec, _run_context(args), note=print)  # waits for an identical run elsewhere
    print(f"{spec.run_key}: top1={record.metrics.top1:.4f} mean_per_class_acc={record.metrics.mean_per_class_acc:.4f}"
          + (" (k-NN classifier)" if spec.mode == "estimate" else ""))
    if spec.mode == "estimate":
        scores = record.metrics.extra.get("estimators", {})
        print("estimators (train split): " + " ".join(
            f"{name}={value:.4g}" if value is not None else f"{name}=n/a" for name, value in scores.items()))
    print(f"record: {result_path(args.results, spec.run_key)}")
    if spec.hparams.limit:  # the numbers of a subset: say so where they are read
        data = record.config["data"]
        print(f"note: a --limit quick try on {data['train_size']} train and {data['test_size']} test images, not "
              "the whole splits; it is never compared with the paper")
    return 0


def cmd_upstream(args: argparse.Namespace) -> int:
    from .vocabulary import parse_sparsity

    args.trackers = require_trackers(args.trackers)  # --log of a backend not installed: before any work
    if args.trackers and args.source is not None:
        raise TransferbenchError("--log with --from: one-shot pruning trains no epochs, so a tracker would get "
                                 "nothing; drop --log")
    args.sparsity = [parse_sparsity(s) for s in args.sparsity]  # 0.9 or 90%; a bare 90 is refused
    SEED.check(args.seed, "--seed")
    if args.executor == "slurm" or args.gpus is not None or args.nodes is not None or args.profile:
        from .dispatch.upstream_jobs import submit_upstream_command

        return submit_upstream_command(args, _loop_options(args))
    if args.source is not None:  # one-shot candidates of a dense model (_add_upstream_source_flags)
        return _prune_from_dense(args)
    from .upstream import train_upstream

    results = train_upstream(args.method, args.sparsity, arch=args.arch, dataset=args.dataset,
                             recipe=args.recipe or "small_cpu",
                             data_root=args.data_root, seed=args.seed, device=args.device, out_dir=args.out,
                             options=_loop_options(args), force=args.force, batch_size=args.batch_size,
                             trackers=args.trackers)
    _print_upstream_results(args, results)
    return 0


def _print_upstream_results(args: argparse.Namespace, results: list) -> None:
    from .vocabulary import format_sparsity

    _print_table(("method", "sparsity", "measured", "upstream_top1", "checkpoint"),
                 [(r.spec.method, format_sparsity(r.spec.sparsity), format_sparsity(r.sparsity),
                   "n/a" if r.top1 is None else f"{r.top1:.4f}", r.path)  # n/a: calibrated on a downstream task
                  for r in results])
    print("registered: run them with `transferbench run --method "
          f"{results[0].spec.method} --sparsity {format_sparsity(results[0].spec.sparsity)} "
          f"--arch {results[0].spec.arch} --task ...`")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if not args.verbose:  # per-epoch lines of ~100 runs would drown the demo's own progress
        logging.getLogger("transferbench").setLevel(logging.WARNING)
    run_demo(args.results, quick=args.quick, study=args.study)
    print(f"see {args.results / 'bias'}" if args.study == "bias"
          else f"see {args.results / 'leaderboards'} and {args.results / 'figures'}")
    return 0


def cmd_tasks_list(args: argparse.Namespace) -> int:
    from .tasks import list_tasks
    from .tasks.variants import has_variants, variant_names

    if args.json:
        print(json.dumps([{"name": t.name, "kind": t.kind, "title": t.title, "num_classes": t.num_classes,
                           "train_size": t.train_size, "test_size": t.test_size, "metric": t.metric,
                           "full_lr": t.full_lr, **({"variants": variant_names(t)} if has_variants(t) else {})}
                          for t in [*list_tasks(), *list_tasks("mini"), *list_tasks("bias")]], indent=1))
        return 0
    header = ("task", "classes", "train", "test", "metric", "full_lr", "dataset")
    rows = [(t.name, t.num_classes, t.train_size or "?", t.test_size, t.metric, t.full_lr, t.title)
            for t in list_tasks()]
    _print_table(header, rows)
    print("\noffline mini-tasks (no data root needed):")
    _print_table(header, [(t.name, t.num_classes, t.train_size, t.test_size, t.metric, t.full_lr, t.title)
                          for t in list_tasks("mini")])
    print("\nbias-study tasks (multi-label: one output per attribute; classes = outputs):")
    _print_table(header, [(t.name, t.num_classes, t.train_size, t.test_size, t.metric, t.full_lr, t.title)
                          for t in list_tasks("bias")])
    variants = [variant_names(t) for t in [*list_tasks("mini"), *list_tasks("bias")] if has_variants(t)]
    print("\nvariants of the multi-label tasks (one output; `transferbench tasks show NAME`):\n  "
          + "\n  ".join(variants))
    return 0


def cmd_tasks_show(args: argparse.Namespace) -> int:
    from .tasks import get_task

    task = get_task(args.task)
    layouts = {"builtin": task.builtin} if task.builtin is not None else {
        **({"folders": f"{task.folders.train}/<class>/*, {task.folders.test}/<class>/*"} if task.folders else {}),
        **({"official": task.official.description} if task.official else {})}
    print(yaml.safe_dump({
        "name": task.name, "title": task.title, "num_classes": task.num_classes,
        "split": task.split_rule, "train_size": task.train_size, "test_size": task.test_size,
        "metric": task.metric, "full_lr": task.full_lr,
        "normalization": {"mean": list(task.normalization.mean), "std": list(task.normalization.std)},
        "looked_for_in": ([f"<data-root>/{d}" for d in task.dirnames] + ["<data-root>"]) if task.builtin is None else
                         "built in (no data root needed)",
        "layouts": layouts,
        **{key: task.extra[key] for key in ("targets", "attribute", "backdoor", "identity_attributes")
           if key in task.extra},
        "notes": task.notes,
    }, sort_keys=False, width=110), end="")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .tasks import check_data

    print(json.dumps(check_data(args.task, args.data_root, strict=args.strict, verify_md5=args.verify_md5)))
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .bounds import Bounds
    from .fastdata.convert import convert_task

    Bounds(int, low=1, optional=True).check(args.workers, "--workers")  # encoding processes: at least one
    for sidecar in convert_task(args.task, args.data_root, args.out, args.max_resolution, args.quality,
                                tuple(args.splits), args.workers, args.write_mode):
        print(json.dumps(sidecar))
    return 0


def cmd_checkpoints_list(args: argparse.Namespace) -> int:
    from .checkpoints.listing import TABLE_COLUMNS, checkpoint_row, filter_checkpoints, table_cells

    rows = [checkpoint_row(spec, args.checkpoint_dir) for spec in filter_checkpoints(args.method, args.arch)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    _print_table(TABLE_COLUMNS, [table_cells(row) for row in rows])
    if any(row["top1_on"] != "imagenet" for row in rows):
        print("upstream_top1: top-1 (%) on the set named in top1_on (ImageNet for published rows; a model trained "
              "here is measured on its own upstream set, e.g. the synthetic shapes set of resnet_tiny)")
    return 0


def cmd_checkpoints_show(args: argparse.Namespace) -> int:
    from .checkpoints.listing import show_checkpoint

    row = show_checkpoint(args.name, args.checkpoint_dir)
    if args.json:
        print(json.dumps(row, indent=1))
    else:
        print(yaml.safe_dump(row, sort_keys=False, width=110), end="")
    return 0


def _print_table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="transferbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"transferbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_command(sub)
    _add_estimate_command(sub)
    _add_upstream_command(sub)
    _add_prune_command(sub)

    demo = sub.add_parser("demo", help="offline end-to-end demo: upstream pruning, transfer, leaderboard, figures")
    add_results_flag(demo, Path("results/demo"), help="results root, checkpoints included (default {default}/)")
    demo.add_argument("--quick", action="store_true", help="the study's quick sweep: demo_quick instead of demo "
                      "(4 methods, 1 task, short training), demo_bias_quick instead of demo_bias")
    demo.add_argument("--study", choices=("transfer", "bias"), default="transfer",
                      help="transfer (default): sparse models on the mini-tasks, leaderboards, figures, estimators; "
                      "bias: the CelebA bias study on the procedural faces set (multi-label fine-tuning, then "
                      "`report bias`)")
    demo.set_defaults(func=cmd_demo)

    add_dispatch_commands(sub)
    add_report_commands(sub)
    _add_tasks_commands(sub)
    _add_data_commands(sub)
    _add_checkpoints_commands(sub)
    return parser


def _add_run_command(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run one transfer experiment and write its result record")
    run.add_argument("--mode", choices=MODES, default="linear",
                     help="linear probe (default), full fine-tuning, estimate (as `transferbench estimate`), or "
                          "evaluate (the checkpoint's own head on the task, no training: a model trained on the task "
                          "itself, e.g. the bias study's CelebA models from `upstream --dataset celeba`)")
    _add_transfer_flags(run, _flagged_hparams())
    run.add_argument("--cudnn-benchmark", action="store_true",
                     help="let cuDNN autotune convolutions (GPU; faster, but a resumed full fine-tuning is no "
                          "longer bit-identical)")
    add_log_flag(run, "the run")
    run.set_defaults(func=cmd_run)


def _add_estimate_command(sub: argparse._SubParsersAction) -> None:
    estimate = sub.add_parser(
        "estimate", help="score a checkpoint for a task without training: LogME, LEEP, NCE, H-score, kNN (one "
                         "record of mode estimate, from the linear probe's cached features)")
    _add_transfer_flags(estimate, [f for f in _flagged_hparams() if f.name in FEATURE_HPARAMS])
    estimate.set_defaults(func=cmd_run, mode="estimate", trackers=[])


def _add_transfer_flags(parser: argparse.ArgumentParser, hparams: list) -> None:
    """The flags `run` and `estimate` share: what to run, where, and the hyper-parameter flags ``hparams``."""
    parser.add_argument("--task", required=True, help="downstream task (see `transferbench tasks list`)")
    parser.add_argument("--method", help="upstream pruning method (see `transferbench checkpoints list`) or an "
                                         "alias: lth (lth_t), rigl (rigl_erk1x/rigl_erk5x on resnet50, rigl on "
                                         "resnet_tiny)")
    parser.add_argument("--sparsity", help="target sparsity: a fraction (0.9) or a percent (90%%), checked against "
                                           "the measured one; with --checkpoint, default: what the file measures")
    parser.add_argument("--arch", help="architecture (default: the registry's, or read from --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, help="use this local checkpoint file instead of the registry's")
    parser.add_argument("--train-missing", action="store_true",
                        help="mini-tasks: train the method's resnet_tiny upstream model now if none is registered "
                             "(seconds to minutes on a CPU; without this flag a missing one is an error saying so)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="where registered checkpoints live (default $TRANSFERBENCH_CHECKPOINTS or "
                             "~/.cache/transferbench/checkpoints)")
    parser.add_argument("--data-root", type=Path, help="folder holding the downstream datasets")
    parser.add_argument("--seed", type=int, default=21, help="seed (the paper used 21 51 81 111 141)")
    # where and how it runs: these flags are named as RunContext's fields (_run_context)
    add_results_flag(parser)
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default <results>/cache/features)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--workers", dest="num_workers", type=int, metavar="N",
                        help="data-loading worker processes (default: this allocation's cores - 1, at most 8)")
    _add_hparam_flags(parser, hparams)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (extraction 1.4x eager on 2 CPU cores after ~20 s of "
                             "compiling; see docs/fast_paths.md)")
    parser.add_argument("--force", action="store_true", help="run again even if the record exists")
    parser.add_argument("--verify-md5", action="store_true", help="also check official archives' md5 sums")
    parser.add_argument("--allow-sparsity-gap", action="store_true",
                        help="accept a checkpoint whose measured sparsity is >0.5 points off its target")


def _add_hparam_flags(parser: argparse.ArgumentParser, hparams: list) -> None:
    """A flag for each of ``hparams`` (HParams fields whose metadata asks for one; help and choices from there),
    and ``--set`` for every field."""
    for hparam in hparams:  # values checked by the schema (HParams), as --set's, in one line
        bounds, choices = hparam.metadata["bounds"], hparam.metadata["choices"]
        parser.add_argument(f"--{hparam.name.replace('_', '-')}", dest=hparam.name, type=_flag_value(bounds),
                            metavar="{" + ",".join(choices) + "}" if choices else None,
                            help=hparam.metadata["help"] + ("" if choices else f" ({bounds})"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any hyper-parameter, e.g. --set lr_decay_after=[30,60] (a flag wins over "
                             f"--set); keys: {', '.join(f.name for f in fields(HParams))}")


def _flag_value(bounds: Bounds):
    """A flag's text as its hyper-parameter's kind (``2.0`` epochs is 2), or as given when it is not one, for the
    schema to refuse in one line (argparse would print its usage too)."""
    def convert(text: str):
        try:
            return bounds.parse(text)
        except ValueError:
            return text

    return convert


def _add_upstream_command(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("upstream", help="train/prune an upstream model and register its checkpoint(s)")
    up.add_argument("--method", required=True,
                    help="an entry of the recipe: dense, magnitude, gmp, woodfisher, rigl, lth, acdc, cram, cram_nm; "
                         "imagenet_resnet50 adds gmp_str, rigl_erk1x and rigl_erk5x (the registry's names); the "
                         "celeba_* recipes have dense, gmp, gmp_pt (post-training GMP) and acdc")
    up.add_argument("--sparsity", nargs="+", default=[0.9],
                    help="target sparsity: a fraction (0.9) or a percent (90%%); several for cram and lth (one "
                         "candidate each)")
    up.add_argument("--arch", help="architecture (default: the recipe's)")
    up.add_argument("--dataset", help="upstream data: shapes (procedural, offline), imagenet, or a multi-label task: "
                                      "celeba (needs --data-root), faces (offline), celeba-<attribute> (default: "
                                      "recipe's)")
    up.add_argument("--recipe", help="small_cpu, imagenet_resnet50, celeba_resnet18, celeba_mobilenet, celeba_cpu, or "
                                     "a recipe .yaml file (default: small_cpu; with --from, imagenet_resnet50 for "
                                     "--dataset imagenet)")
    up.add_argument("--data-root", type=Path, help="ImageNet folder with train/ and val/ (--dataset imagenet), or the "
                                                   "folder holding CelebA's official layout (--dataset celeba)")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--device", default="auto")
    up.add_argument("--out", type=Path, help="where to write the checkpoints (default <checkpoint dir>/upstream)")
    add_log_flag(up, "the training (rank 0)")
    _add_upstream_source_flags(up)
    _add_upstream_recipe_flags(up)
    _add_upstream_speed_flags(up)
    _add_upstream_launch_flags(up)
    up.set_defaults(func=cmd_upstream)


def _add_upstream_source_flags(up: argparse.ArgumentParser) -> None:
    """Where the model comes from when it is not trained here (one-shot candidates of a published dense model)."""
    up.add_argument("--from", dest="source", metavar="NAME|PATH",
                    help="prune this dense model one-shot instead of training one: a registry row (cram_resnet50, "
                         "cram_nm_resnet50: its file in the checkpoint directory, checked against the row's sha256, "
                         "never downloaded) or a checkpoint file; with --method cram (global magnitude, one candidate "
                         "per --sparsity) or cram_nm (2:4), BN recalibrated on a class-balanced sample of the "
                         "training set (the recipe's calibration block)")


def cmd_prune(args: argparse.Namespace) -> int:
    from .tasks import get_task
    from .upstream.from_dense import UPSTREAM_CALIBRATION, prune_published, pruned_method
    from .vocabulary import parse_sparsity

    method = pruned_method(args.method, args.pattern)
    if args.samples is not None and args.samples < 1:
        raise TransferbenchError(f"--samples {args.samples}: the calibration sample needs at least one image")
    sparsities = [parse_sparsity(s) for s in args.sparsity] if args.sparsity else []
    if args.pattern and sparsities not in ([], [0.5]):
        raise TransferbenchError("--pattern 2:4 keeps half the weights: drop --sparsity (or pass 0.5)")
    if not args.pattern and not sparsities:
        raise TransferbenchError("give --sparsity (one or more) or --pattern 2:4")
    upstream_data = args.calibration in (None, *UPSTREAM_CALIBRATION)
    if not upstream_data:
        get_task(args.calibration)  # an unknown name: one line listing the tasks
    results = prune_published(args.source, method, sparsities or [0.5],
                              dataset=args.calibration if upstream_data else None, recipe=args.recipe,
                              data_root=args.data_root, arch=args.arch, device=args.device, out_dir=args.out,
                              samples=args.samples, calibration_task=None if upstream_data else args.calibration)
    _print_upstream_results(args, results)
    return 0


def _add_prune_command(sub: argparse._SubParsersAction) -> None:
    prune = sub.add_parser("prune", help="one-shot post-training pruning of a dense model from calibration data "
                                         "(Wanda, SparseGPT; unstructured or 2:4), registered as checkpoints")
    # from_dense.PRUNERS, written here too: the CLI parses without importing torch
    prune.add_argument("--method", required=True, choices=("magnitude", "wanda", "sparsegpt"),
                       help="magnitude (|W| per layer; candidates named oneshot_magnitude), wanda or sparsegpt")
    prune.add_argument("--sparsity", nargs="+", help="target sparsities (fractions or percents), one checkpoint each")
    prune.add_argument("--pattern", help="2:4 semi-structured instead of --sparsity (the method becomes <method>_nm)")
    prune.add_argument("--from", dest="source", required=True,
                       help="the dense model: a checkpoint file (any format `run --checkpoint` reads) or a dense "
                            "registry row whose file is in the checkpoint directory")
    prune.add_argument("--arch", help="architecture of --from (default: read from the file)")
    prune.add_argument("--calibration", default=None, metavar="imagenet|shapes|TASK",
                       help="where the calibration sample comes from: the upstream data (imagenet, the default; "
                            "shapes: the offline procedural set of the mini-suite) or a downstream task's training "
                            "split (e.g. cifar10: candidates pruned for that task, named after it, not scored on "
                            "upstream data)")
    prune.add_argument("--data-root", type=Path, help="ImageNet folder with train/ and val/ (--calibration imagenet), "
                                                      "or the tasks' data root (--calibration TASK)")
    prune.add_argument("--samples", type=int, help="calibration images, class-balanced and seeded (default: the "
                                                   "recipe's calibration size, 1000)")
    prune.add_argument("--recipe", help="the recipe whose data, transforms and calibration block are used (default: "
                                        "imagenet_resnet50, or small_cpu for --calibration shapes)")
    prune.add_argument("--device", default="auto")
    prune.add_argument("--out", type=Path, help="where to write the checkpoints (default <checkpoint dir>/upstream)")
    prune.set_defaults(func=cmd_prune)


def _prune_from_dense(args: argparse.Namespace) -> int:
    from .upstream.from_dense import prune_published

    results = prune_published(args.source, args.method, args.sparsity, dataset=args.dataset, recipe=args.recipe,
                              data_root=args.data_root, arch=args.arch, device=args.device, out_dir=args.out)
    _print_upstream_results(args, results)
    return 0


def _add_upstream_recipe_flags(up: argparse.ArgumentParser) -> None:
    """How the recipe is run: at its published global batch, or at another one by the recipe's scaling rule."""
    up.add_argument("--batch-size", type=int, metavar="B",
                    help="global batch (all GPUs together) instead of the recipe's published one: the lr and "
                         "step-counted knobs (RigL's ΔT) follow the recipe's scaling rule (linear_lr: lr x "
                         "B/published; same_lr), epochs and warm-up stay; recorded as `scaled` in the checkpoint's "
                         "recipe_config")


def _add_upstream_speed_flags(up: argparse.ArgumentParser) -> None:
    """Loader workers, precision and memory format of the upstream loop (each recorded in the checkpoint)."""
    from .upstream.options import LOADERS, PRECISIONS

    up.add_argument("--workers", type=int, help="loader processes per GPU process (default: up to 8 on a GPU, "
                                                "0 on a CPU); never changes a number")
    up.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="fp32, bf16 autocast, or fp64 (numerical reference checks); part of the run's identity")
    up.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster on GPUs)")
    up.add_argument("--sync-bn", action="store_true",
                    help="BatchNorm over the global batch across GPUs (the published runs normalised per GPU)")
    up.add_argument("--loader", default="torchvision", choices=LOADERS,
                    help="training batches decoded by torchvision in loader workers, or by FFCV from the .beton "
                         "files of `transferbench data convert --task imagenet` (ImageNet only)")
    up.add_argument("--force", action="store_true",
                    help="train again even if this run is registered already (it is skipped otherwise)")


def _loop_options(args: argparse.Namespace):
    from .upstream.options import LoopOptions

    return LoopOptions(workers=args.workers, precision=args.precision, channels_last=args.channels_last,
                       sync_bn=args.sync_bn, loader=args.loader)


def _add_upstream_launch_flags(up: argparse.ArgumentParser) -> None:
    """Where the upstream job runs: here (torchrun for several processes) or on SLURM through submitit."""
    up.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local (this process; torchrun --nproc-per-node N for several) or slurm: one job of "
                         "--nodes x (--gpus / --nodes) processes, one per GPU, requeued on preemption and resumed")
    up.add_argument("--profile", help="--executor slurm: cluster profile, slurm/<name>.yaml or a .yaml path (its "
                                      "upstream: section sizes the job unless --gpus/--nodes do)")
    up.add_argument("--gpus", type=int, help="--executor slurm: GPUs in all (one process each), a multiple of --nodes")
    up.add_argument("--nodes", type=int, help="--executor slurm: nodes the GPUs are spread over (default 1)")


def _add_tasks_commands(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("tasks", help="the task registry").add_subparsers(dest="tasks_cmd", required=True)
    tasks_list = tasks.add_parser("list", help="list the 12 tasks and the offline mini-tasks")
    tasks_list.add_argument("--json", action="store_true", help="as a JSON list (kind: paper or mini)")
    tasks_list.set_defaults(func=cmd_tasks_list)
    show = tasks.add_parser("show", help="show one task card")
    show.add_argument("task")
    show.set_defaults(func=cmd_tasks_show)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets on disk").add_subparsers(dest="data_cmd", required=True)
    check = data.add_parser("check", help="check a task's data and print its layout and split sizes as JSON")
    check.add_argument("--task", required=True)
    check.add_argument("--data-root", type=Path, help="folder holding the datasets (not needed for mini-tasks)")
    check.add_argument("--strict", action="store_true", help="also require the paper's exact split sizes")
    check.add_argument("--verify-md5", action="store_true", help="also check official archives' md5 sums")
    check.set_defaults(func=cmd_data_check)
    convert = data.add_parser("convert", help="write a task's FFCV .beton files for `run --loader ffcv` "
                                              "(pip install 'transferbench[ffcv]'; see docs/fast_paths.md)")
    convert.add_argument("--task", required=True, help="a task of `tasks list`, or imagenet (the upstream train/val "
                                                      "folders, for `upstream --loader ffcv`)")
    convert.add_argument("--data-root", type=Path, help="folder holding the datasets (not needed for mini-tasks)")
    convert.add_argument("--out", type=Path, help="write under OUT/<task>/ instead of $TRANSFERBENCH_FFCV_DIR, "
                                                  "<data-root>/.ffcv or ~/.cache/transferbench/ffcv")
    convert.add_argument("--max-resolution", type=int, default=512,
                         help="longest image side stored (default 512: keeps the 256-px shorter side of the "
                              "protocol's resize for aspect ratios up to 2:1)")
    convert.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored images (default 90)")
    convert.add_argument("--write-mode", choices=("jpg", "raw"), default="jpg",
                         help="jpg (default): re-encoded JPEGs; raw: decoded pixels, lossless, about 3x the "
                              "torchvision loader's speed on CPU, ~7x the disk (benchmarks/bench_loaders.py)")
    convert.add_argument("--splits", nargs="+", default=["train", "test"], choices=("train", "test"))
    convert.add_argument("--workers", type=int, help="encoding processes (default min(4, cores))")
    convert.set_defaults(func=cmd_data_convert)


def _add_checkpoints_commands(sub: argparse._SubParsersAction) -> None:
    ckpts = sub.add_parser("checkpoints", help="the checkpoint registry").add_subparsers(dest="ck_cmd",
                                                                                          required=True)
    lst = ckpts.add_parser("list", help="list registered upstream checkpoints: sparsity, upstream top-1, whether "
                                        "the file is on disk and where, sha256, URL")
    lst.add_argument("--method", help="a method or an alias (rigl: rigl_erk1x and rigl_erk5x; lth: lth_t)")
    lst.add_argument("--arch", help="an architecture or a family (resnet50 includes resnet50_rigl, resnet50_str)")
    lst.add_argument("--json", action="store_true", help="every field of every row, as a JSON list")
    lst.add_argument("--checkpoint-dir", type=Path,
                     help="look for the published files here (default $TRANSFERBENCH_CHECKPOINTS or "
                          "~/.cache/transferbench/checkpoints)")
    lst.set_defaults(func=cmd_checkpoints_list)
    show = ckpts.add_parser("show", help="every field of one registry row, and whether its file is on disk (path)")
    show.add_argument("name", help="a row's name (see `checkpoints list`)")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.add_argument("--checkpoint-dir", type=Path, help="look for a published file here (as list)")
    show.set_defaults(func=cmd_checkpoints_show)
    _add_checkpoints_fetch_commands(ckpts)


def _add_checkpoints_fetch_commands(ckpts: argparse._SubParsersAction) -> None:
    """`checkpoints fetch` (published files, downloaded and verified) and `checkpoints add` (one's own file)."""
    fetch = ckpts.add_parser("fetch", help="download published checkpoints into the checkpoint directory "
                                           "(resumable, sha256-checked; digests recorded in checkpoints.lock.json)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="rows to fetch (see `checkpoints list`)")
    fetch.add_argument("--all", action="store_true", help="every published row (of --method / --arch when given)")
    fetch.add_argument("--method", help="with --all: only this method (or alias: rigl, lth)")
    fetch.add_argument("--arch", help="with --all: only this architecture or family")
    fetch.add_argument("--checkpoint-dir", type=Path, help="where to put them (default $TRANSFERBENCH_CHECKPOINTS or "
                                                           "~/.cache/transferbench/checkpoints)")
    fetch.set_defaults(func=cmd_checkpoints_fetch)
    add = ckpts.add_parser("add", help="register your own checkpoint file, so `run`, `sweep` and `upstream --from` "
                                       "find it by method and sparsity (checked by loading it first)")
    add.add_argument("path", type=Path, metavar="PATH", help="the checkpoint file (any format `checkpoints` reads)")
    add.add_argument("--method", required=True, help="a registered method (its published row then gets this file) "
                                                     "or a name of your own")
    add.add_argument("--sparsity", required=True, help="its target sparsity: 0.9 or 90%%")
    add.add_argument("--arch", required=True, help="its architecture (resnet50, resnet50_rigl, mobilenet, ...)")
    add.add_argument("--name", help="the row's name (default: the published row of that method, sparsity and arch, "
                                    "else <method>_<percent>_<arch>)")
    add.add_argument("--allow-sparsity-gap", action="store_true",
                     help="accept a file whose measured sparsity is off its target")
    add.set_defaults(func=cmd_checkpoints_add)


def cmd_checkpoints_fetch(args: argparse.Namespace) -> int:
    from .checkpoints.fetch import fetch_rows, rows_to_fetch

    return fetch_rows(rows_to_fetch(args.names, args.all, args.method, args.arch), args.checkpoint_dir,
                      names_given=bool(args.names))


def cmd_checkpoints_add(args: argparse.Namespace) -> int:
    from .checkpoints.fetch import add_checkpoint
    from .vocabulary import parse_sparsity

    spec = add_checkpoint(args.path, args.method, parse_sparsity(args.sparsity), args.arch, name=args.name,
                          allow_sparsity_gap=args.allow_sparsity_gap)
    print(f"registered {spec.name}: {spec.path} (sha256 {spec.sha256[:16]}…); run it with `transferbench run "
          f"--method {spec.method} --sparsity {spec.sparsity:g} --arch {spec.arch} --task ...`")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a misused flag reported as every other error is: one ``error:`` line, exit status 2 (the
    usage block would bury it; ``--help`` prints it). Sub-commands' parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    from .progress import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        _check_output_folder(args)
        return args.func(args)
    except TransferbenchError as exc:
        # raised in a DataLoader worker, the message carries the worker's traceback: keep the original line
        print(f"error: {str(exc).rsplit('TransferbenchError: ', 1)[-1]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `transferbench checkpoints list | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except OSError as exc:  # the file system refused (full, read-only, a path through a file): the user's to fix
        log.debug("the operating system's error, in full", exc_info=True)  # -v shows where
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


# The commands that write into folders, by the attributes naming them: checked writable before any work starts.
_WRITTEN_FOLDERS = {"run": ("results", "cache_dir"), "sweep": ("results",), "demo": ("results",),
                    "upstream": ("out",)}


def _check_output_folder(args: argparse.Namespace) -> None:
    """A results root (or feature cache) that is a file, lies under one, or sits on a read-only or virtual file
    system is refused before the command trains or extracts anything (the OSError later would cost the work done
    until then)."""
    if args.command == "sweep" and (args.dry_run or args.spec in SHOW_WORDS):  # they print, write nothing
        return
    for attribute in _WRITTEN_FOLDERS.get(args.command, ()):
        if getattr(args, attribute, None) is not None:
            require_writable_folder(getattr(args, attribute), f"--{attribute.replace('_', '-')}")


if __name__ == "__main__":
    sys.exit(main())
