"""Variants of a multi-label task card, resolved by name: one attribute alone, or one attribute with a backdoor.

A card with ``targets: multilabel`` and ``attribute_names`` (``celeba``, ``faces``) is the joint task: one output
per attribute. ``get_task`` also resolves, without a card of their own:

* ``<card>-<attribute>`` (the attribute in lower case, e.g. ``celeba-blond_hair``): that attribute alone, one
  sigmoid output (K = 1), as the study's single-label runs;
* ``<card>-<attribute>-<type>`` (e.g. ``celeba-blond_hair-grayscale``): the same with a backdoor cue
  (``tasks.backdoor``), for the attributes and types of the card's ``backdoors:`` section.

A variant is the card's TaskSpec with its own name and title, ``num_classes`` 1 and, in ``extra``, ``attribute``
(the name as the annotation file spells it), ``backdoor`` (the cue's type, backdoor variants only) and
``variant_of`` (the card). Its splits are the card's, narrowed to that attribute at load time (``narrow_split``).
Name resolution reads the cards only (no torch), like the rest of the registry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import TransferbenchError
from .spec import TaskSpec

if TYPE_CHECKING:
    from .data import Split

SEPARATOR = "-"


def has_variants(card: TaskSpec) -> bool:
    return card.extra.get("targets") == "multilabel" and bool(card.extra.get("attribute_names"))


def backdoor_targets(card: TaskSpec) -> tuple[list[str], list[str]]:
    """(target attributes, cue types) of the card's ``backdoors:`` section; empty lists without one."""
    section = card.extra.get("backdoors") or {}
    return list(section.get("train_fractions") or {}), list(section.get("types") or [])


def variant_names(card: TaskSpec) -> str:
    """The variants' name patterns, for listings and messages."""
    text = f"{card.name}{SEPARATOR}<attribute>"
    targets, types = backdoor_targets(card)
    if targets:
        text += (f", {card.name}{SEPARATOR}<attribute>{SEPARATOR}<{'|'.join(types)}> for "
                 f"{', '.join(t.lower() for t in targets)}")
    return text


def resolve_variant(name: str, cards: dict[str, TaskSpec]) -> TaskSpec | None:
    """The variant ``name`` of one of ``cards``; None when no multi-label card's name and ``-`` begin it; an
    unknown attribute or backdoor is one line that lists the choices."""
    card = next((c for c in cards.values() if has_variants(c) and name.startswith(c.name + SEPARATOR)), None)
    if card is None:
        return None
    parts = name[len(card.name) + 1:].split(SEPARATOR)
    by_lower = {a.lower(): a for a in card.extra["attribute_names"]}
    attribute = by_lower.get(parts[0])
    if attribute is None or len(parts) > 2:
        raise TransferbenchError(
            f"unknown task '{name}' (--task): {card.name}'s variants are {variant_names(card)}; "
            f"attributes: {', '.join(by_lower)}"
        )
    extra = {**card.extra, "attribute": attribute, "variant_of": card.name}
    title = f"{card.title}: {attribute}"
    if len(parts) == 2:
        targets, types = backdoor_targets(card)
        if parts[1] not in types:
            choices = f"choose one of: {', '.join(types)}" if types else f"{card.name} has no backdoor variants"
            raise TransferbenchError(f"unknown backdoor '{parts[1]}' in task '{name}' (--task); {choices}")
        if attribute not in targets:
            raise TransferbenchError(
                f"task '{name}' (--task): {attribute} is not a backdoor target of {card.name}; choose one of: "
                f"{', '.join(f'{card.name}-{t.lower()}-{parts[1]}' for t in targets)}"
            )
        extra["backdoor"] = parts[1]
        title += f", {parts[1]} backdoor"
    return replace(card, name=name, title=title, num_classes=1, extra=extra)


def narrow_split(split: Split, task: TaskSpec, split_name: str) -> Split:
    """``split`` (a multi-label card's, every attribute an output) as ``task`` sees it: checked against the card's
    attribute names, then narrowed to the variant's attribute, with its backdoor's cue on the chosen images."""
    if split.targets != "multilabel":
        return split
    names = task.extra.get("attribute_names")
    if names is not None and list(split.attribute_names or ()) != list(names):
        raise TransferbenchError(
            f"{split.label_source or split.root} names the attributes {', '.join((split.attribute_names or [])[:3])}"
            f"..., not the {len(names)} of the {task.extra.get('variant_of', task.name)} card "
            f"({', '.join(names[:3])}...); the annotation file belongs to another release; re-extract the dataset"
        )
    attribute = task.extra.get("attribute")
    if attribute is None:
        return split
    import numpy as np

    from .backdoor import BackdooredDataset, BackdoorSettings, choose_backdoored, selection_seed
    from .data import MultiLabelTargets

    column = list(split.attribute_names).index(attribute)
    labels = np.asarray(split.attributes)[:, [column]].astype(np.int64)
    images = split.dataset.dataset if isinstance(split.dataset, MultiLabelTargets) else split.dataset
    dataset = MultiLabelTargets(images, labels)
    backdoored = None
    kind = task.extra.get("backdoor")
    if kind is not None:
        settings = BackdoorSettings.from_card(task.extra.get("backdoors"), task.extra["variant_of"])
        backdoored = choose_backdoored(labels[:, 0], settings.fractions(attribute, split_name),
                                       selection_seed(settings.seed, split_name, attribute, kind))
        dataset = BackdooredDataset(dataset, backdoored, kind, settings.square_area)
    return replace(split, dataset=dataset, labels=labels, classes=[attribute], backdoored=backdoored)
