"""Load any supported checkpoint file into a TransferModel, with its fixed masks and measured sparsity.

Files are always read with ``torch.load(..., weights_only=True)``: a checkpoint is data, and unpickling
arbitrary objects from a downloaded file could run code. Every way a file can be wrong ends in a one-line
TransferbenchError that names the file and the fix.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ..digests import sha256_file
from ..errors import TransferbenchError
from ..models import TransferModel, create_model, list_archs, model_class
from ..sparsity import SparsityReport, SparsityRule, measure_sparsity, prunable_weights, set_weights
from ..sparsity import sparsity_rule as method_sparsity_rule
from .formats import decode_checkpoint
from .lockfile import verify_recorded
from .registry import CheckpointSpec, format_sparsity, local_path, normalize_sha256, normalize_sparsity

log = logging.getLogger("transferbench")

_BN_COUNTER = "num_batches_tracked"  # absent from pre-0.4.1 checkpoints; BN works without it
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_EXAMPLES = 2


@dataclass
class LoadedCheckpoint:
    """A model with the upstream weights (and the upstream head, sized from the file), ready for transfer."""

    model: TransferModel
    masks: dict[str, torch.Tensor]  # every backbone Conv/Linear weight → bool mask (True = kept); head excluded
    arch: str
    format: str
    sha256: str
    path: Path
    sparsity: SparsityReport  # all prunable weights, the stored upstream head included
    backbone_sparsity: SparsityReport  # head excluded
    config: dict[str, Any] | None = field(default=None)  # the IST model_config, when the file has one
    prunable: str = "all_conv_fc"  # the prunable set of the checkpoint's method (sparsity_rules.yaml)
    method_sparsity: SparsityReport | None = None  # over that set: what the registered sparsity is compared with
    trained_seed: int | None = None  # a model trained here: the seed its metadata names (None: none named)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes


def _trained_seed(blob: Any) -> int | None:
    """The seed in the metadata `transferbench upstream` writes into its checkpoints, if the file has one."""
    metadata = blob.get("metadata") if isinstance(blob, dict) else None
    seed = metadata.get("seed") if isinstance(metadata, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":  # tensors only, safe by construction
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if unsafe := _UNSAFE_GLOBAL.search(message):
            raise TransferbenchError(
                f"{path} contains pickled Python objects (e.g. {unsafe.group(1)}) that transferbench does not "
                f"unpickle (weights_only=True); if you trust the file, re-save its tensors with "
                f"torch.save(model.state_dict(), ...) and use that file"
            ) from None
        raise TransferbenchError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or not a torch.save file); download it again"
        ) from None
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = first_line.split(". ")[0].rstrip(".")  # torch appends internal-assert boilerplate
        raise TransferbenchError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {reason}); download it again"
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise TransferbenchError(f"{path} is a .safetensors file: pip install safetensors (timm brings it)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TransferbenchError(f"{path} is not a readable .safetensors file ({reason}); download it again") from None


def _verify_sha256(path: Path, digest: str, expected: str | None) -> None:
    expected = normalize_sha256(expected, f"expected sha256 for {path}")
    if expected and not digest.startswith(expected):
        raise TransferbenchError(
            f"checksum mismatch for {path}: sha256 is {digest[:16]}…, expected {expected}; the file is corrupt "
            f"or a different checkpoint, download it again"
        )


@cache
def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    """State-dict key → shape of ``arch`` (1000-way head), built on the meta device so it costs no memory."""
    with torch.device("meta"):
        model = create_model(arch)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _is_head_key(key: str, head_name: str) -> bool:
    return key.startswith(head_name + ".")


def _mismatch(state: dict[str, torch.Tensor], arch: str) -> str | None:
    """Why ``state`` does not fit ``arch`` (None when it does); the head's class count may differ."""
    expected = _signature(arch)
    head_name = model_class(arch).head_name
    missing = [k for k in expected if k not in state and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in state if k not in expected]
    shapes = []
    for key in expected.keys() & state.keys():
        have, want = tuple(state[key].shape), expected[key]
        same = have[1:] == want[1:] if _is_head_key(key, head_name) and have else have == want
        if not same:
            shapes.append(f"{key} {have} vs {want}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:_EXAMPLES])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:_EXAMPLES])})")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ (e.g. {', '.join(sorted(shapes)[:_EXAMPLES])})")
    return "; ".join(problems) or None


def infer_arch(state: dict[str, torch.Tensor]) -> list[str]:
    """Every registered architecture whose keys and shapes ``state`` matches (head size aside)."""
    return [arch for arch in list_archs() if _mismatch(state, arch) is None]


def _resolve_arch(path: Path, arch: str | None, state: dict[str, torch.Tensor], config_arch: str | None) -> str:
    if arch and config_arch and arch != config_arch:
        raise TransferbenchError(
            f"{path} was saved for arch '{config_arch}' (its model_config) but arch '{arch}' was requested; "
            f"drop --arch or pass --arch {config_arch}"
        )
    chosen = arch or config_arch
    if chosen:
        try:
            model_class(chosen)  # this project's, or any timm architecture's name
        except TransferbenchError:
            origin = "its model_config names" if chosen == config_arch else "requested"
            raise TransferbenchError(
                f"{path}: {origin} arch '{chosen}', which transferbench does not know; known: "
                f"{', '.join(list_archs())}, or any timm model name (pip install timm)"
            ) from None
        return chosen
    candidates = infer_arch(state)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise TransferbenchError(f"{path} fits several architectures ({', '.join(candidates)}); pass --arch")
    raise TransferbenchError(
        f"cannot tell the architecture of {path}: its keys fit none of {', '.join(list_archs())}; "
        f"pass --arch if it is one of them"
    )


def by_position(path: Path, state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """``state`` renamed to ``arch``'s keys in order: EfficientNet-PyTorch and timm register the same layers in the
    same order (stem, blocks by stage, head), so the n-th tensor of one is the n-th of the other; every pair's
    shape is checked (the head's class count aside), and a mismatch is a one-line error."""
    target = list(_signature(arch).items())
    source = [(k, v) for k, v in state.items()]
    if len(source) != len(target):
        raise TransferbenchError(f"{path} has {len(source)} tensors but {arch} has {len(target)}: it is not an {arch} "
                                 "in EfficientNet-PyTorch's naming; pass the --arch it is")
    head = model_class(arch).head_name
    renamed = {}
    for (key, value), (name, shape) in zip(source, target, strict=True):
        same = tuple(value.shape)[1:] == shape[1:] if _is_head_key(name, head) else tuple(value.shape) == shape
        if not same:
            raise TransferbenchError(f"{path}: {key} {tuple(value.shape)} does not fit {arch}'s {name} {shape}; pass "
                                     "the --arch this file is")
        renamed[name] = value
    return renamed


def _check_fits(path: Path, arch: str, state: dict[str, torch.Tensor]) -> None:
    problem = _mismatch(state, arch)
    if problem is None:
        return
    others = [a for a in infer_arch(state) if a != arch]
    hint = f"pass --arch {others[0]}" if others else f"pass --arch with the right one of {', '.join(list_archs())}"
    raise TransferbenchError(f"{path} does not fit arch '{arch}': {problem}; {hint}")


def _build(arch: str, state: dict[str, torch.Tensor]) -> TransferModel:
    head_name = model_class(arch).head_name
    model = create_model(arch, num_classes=int(state[f"{head_name}.weight"].shape[0]))
    own = model.state_dict()
    complete = {**{k: v for k, v in own.items() if k.endswith(_BN_COUNTER)}, **state}
    try:
        model.load_state_dict(complete, strict=True)
    except RuntimeError as exc:  # e.g. a head whose weight and bias disagree on the class count
        reason = " ".join(str(exc).split())[:160]
        raise TransferbenchError(f"cannot load the weights into '{arch}': {reason}") from None
    return model


def check_sparsity(path: Path, rule: SparsityRule, target: float, sparsity: SparsityReport, in_set: SparsityReport,
                   max_gap: float = 0.005, allow_sparsity_gap: bool = False, method: str | None = None) -> None:
    """The registered-vs-measured gate, like with like: ``in_set`` (the zeros over the weights the method prunes)
    must be within the rule's allowed gap of what an authentic file registered at ``target`` measures there, and
    the weights outside that set must be dense (a file pruned where the method never prunes is another's).

    Raises a TransferbenchError naming the file and the fix, or only warns with ``allow_sparsity_gap``.
    """
    expected, allowed = rule.expected(target), rule.allowed_gap(max_gap)
    outside = sparsity.select([name for name in sparsity.per_layer if name not in in_set.per_layer])
    who = method or "its method"
    problems = []
    gap = abs(in_set.overall - expected)
    if gap > allowed:
        meaning = "" if expected == target else f", which means {expected:.2%} there ({rule.kind} rule)"
        problems.append(f"{path} has {in_set.overall:.2%} zeros over the weights {who} prunes ({rule.prunable}) but "
                        f"is registered as "
                        f"{format_sparsity(target)}{meaning}: a gap of {gap * 100:.2f} pp > {allowed * 100:.2f} pp")
    if outside.total and outside.overall > allowed:
        names = sorted(outside.per_layer)
        examples = ", ".join(names[:_EXAMPLES]) + (", ..." if len(names) > _EXAMPLES else "")
        problems.append(f"{path} has {outside.overall:.2%} zeros in the weights {who} keeps "
                        f"dense (outside {rule.prunable}: {examples})")
    if not problems:
        return
    message = "; ".join(problems)
    if not allow_sparsity_gap:
        raise TransferbenchError(f"{message}; check that this is the right file, or pass --allow-sparsity-gap")
    log.warning("%s (allowed)", message)


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | None = None,
    fmt: str = "auto",
    expected_sha256: str | None = None,
    target_sparsity: float | None = None,
    allow_sparsity_gap: bool = False,
    max_gap: float = 0.005,
    method: str | None = None,
    prunable: str | None = None,
) -> LoadedCheckpoint:
    """Load ``path`` into a model of ``arch`` (default: from the file's model_config, else from its keys).

    The head is sized from the stored one. Masks are the stored ones where the file has them, else
    ``weight != 0``, for every backbone Conv/Linear weight. With ``expected_sha256`` (full or a ≥ 8-digit
    prefix) the file's digest must match. ``method`` (and a registry row's ``prunable`` set) say which weights
    the checkpoint's method prunes (sparsity_rules.yaml; default: every Conv/Linear weight, head included). With
    ``target_sparsity`` (0.9 or 90) the sparsity measured over those weights must match it as the method's rule
    says (``check_sparsity``; ``max_gap`` for a nominal rule) unless ``allow_sparsity_gap``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise TransferbenchError(f"checkpoint {path} {what}; check the path given to --checkpoint")
    digest = sha256_file(path)
    _verify_sha256(path, digest, expected_sha256)

    blob = _read(path)
    decoded = decode_checkpoint(blob, origin=str(path), fmt=fmt)
    if decoded.format == "efficientnet_pytorch":
        if not arch:
            raise TransferbenchError(f"{path} is in EfficientNet-PyTorch's naming (_conv_stem, _blocks.N): pass the "
                                     "timm architecture it maps onto, e.g. --arch tf_efficientnet_lite0 (TF weights: "
                                     "'same' padding) or efficientnet_lite0")
        decoded.state = by_position(path, decoded.state, arch)
    chosen = _resolve_arch(path, arch, decoded.state, decoded.config_arch)
    _check_fits(path, chosen, decoded.state)
    model = _build(chosen, decoded.state)

    # Stored masks were already multiplied into the weights by decode_checkpoint, and masks read off the zeros
    # hold by construction, so W[mask == 0] == 0 holds for every mask returned here.
    backbone = prunable_weights(model, include_head=False)
    masks = {name: decoded.masks[name] if name in decoded.masks else weight.detach() != 0
             for name, weight in backbone.items()}
    sparsity = measure_sparsity(model, include_head=True)
    backbone_sparsity = sparsity.select(backbone)
    rule = method_sparsity_rule(method, prunable, chosen)
    method_sparsity = sparsity.select(set_weights(model, rule.prunable))

    if target_sparsity is not None:
        check_sparsity(path, rule, normalize_sparsity(target_sparsity), sparsity, method_sparsity, max_gap,
                       allow_sparsity_gap, method)

    log.info(
        "checkpoint %s: arch %s, format %s, sparsity %.2f%% (backbone %.2f%%, %s %.2f%%), %d classes in the stored "
        "head", path, chosen, decoded.format, 100 * sparsity.overall, 100 * backbone_sparsity.overall, rule.prunable,
        100 * method_sparsity.overall, model.num_classes,
    )
    return LoadedCheckpoint(
        model=model,
        masks=masks,
        arch=chosen,
        format=decoded.format,
        sha256=digest,
        path=path,
        sparsity=sparsity,
        backbone_sparsity=backbone_sparsity,
        config=decoded.config,
        prunable=rule.prunable,
        trained_seed=_trained_seed(blob),
        method_sparsity=method_sparsity,
    )


def peek_arch(path: str | os.PathLike) -> str | None:
    """The architecture a checkpoint file is for: its model_config's, else the one its keys fit; None if unclear.

    Reads the file (weights_only) without building a model; unreadable files raise TransferbenchError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferbenchError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    decoded = decode_checkpoint(_read(path), origin=str(path))
    if decoded.config_arch:
        return decoded.config_arch
    candidates = infer_arch(decoded.state)
    return candidates[0] if len(candidates) == 1 else None


def peek_sparsity(path: str | os.PathLike, arch: str, method: str | None = None) -> float:
    """The zero fraction of a checkpoint file over the weights ``method`` prunes on ``arch`` (its prunable set, as
    the registry's gate measures it), rounded to a whole percent: the target of a file given without one.

    Reads the file (weights_only) without building a model."""
    path = Path(path).expanduser()
    state = decode_checkpoint(_read(path), origin=str(path)).state
    weights = set_weights(state, method_sparsity_rule(method, arch=arch).prunable, model_class(arch).head_name)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return round(zeros / total, 2) if total else 0.0


def load_registered(
    spec: CheckpointSpec,
    directory: str | os.PathLike | None = None,
    allow_sparsity_gap: bool = False,
    max_gap: float = 0.005,
) -> LoadedCheckpoint:
    """Find ``spec``'s file and load it, checking its sha256 (when known), arch and registered sparsity (over the
    weights its method prunes, as its sparsity rule says).

    One-shot rows (CrAM) are dense files, so their sparsity is checked by whoever prunes them, not here.
    """
    path = local_path(spec, directory)
    verify_recorded(spec, path, sha256_file(path))  # a published file: its pinned sha256, or the one fetch recorded
    return load_checkpoint(
        path,
        arch=spec.arch,
        expected_sha256=spec.sha256,
        target_sparsity=None if spec.oneshot else spec.sparsity,
        allow_sparsity_gap=allow_sparsity_gap,
        max_gap=max_gap,
        method=spec.method,
        prunable=spec.prunable,
    )
