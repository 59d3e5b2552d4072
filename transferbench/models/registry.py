"""Architecture registry: arch name → TransferModel subclass (timm-style ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import TransferbenchError
from .base import TransferModel

ModelClass = TypeVar("ModelClass", bound=type[TransferModel])

_REGISTRY: dict[str, type[TransferModel]] = {}


def register_model(arch: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make ``create_model(arch)`` build this TransferModel subclass.

    The class must accept ``num_classes`` as its only constructor argument; its ``arch`` attribute is set to
    the registered name.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        if not (isinstance(cls, type) and issubclass(cls, TransferModel)):
            raise TypeError(f"register_model({arch!r}) needs a TransferModel subclass, got {cls!r}")
        if arch in _REGISTRY and _REGISTRY[arch] is not cls:
            raise ValueError(f"architecture {arch!r} is already registered to {_REGISTRY[arch].__name__}")
        cls.arch = arch
        _REGISTRY[arch] = cls
        return cls

    return decorator


def list_archs() -> list[str]:
    return sorted(_REGISTRY)


def model_class(arch: str) -> type[TransferModel]:
    """The registered class for ``arch`` (its class attributes describe the model without building it); an
    architecture of timm's when this project has none of that name (``timm_family``)."""
    if arch in _REGISTRY:
        return _REGISTRY[arch]
    from .timm_family import timm_available, timm_class

    if timm_available():
        try:
            return timm_class(arch)
        except TransferbenchError:
            pass
    raise TransferbenchError(
        f"unknown architecture '{arch}' (--arch); known: {', '.join(list_archs())}, or any timm model name"
        + ("" if timm_available() else " with timm installed (pip install timm)")
    )


def create_model(arch: str, num_classes: int = 1000) -> TransferModel:
    """Build ``arch`` with a ``num_classes``-way head (randomly initialised weights)."""
    if num_classes < 1:
        raise TransferbenchError(f"num_classes must be positive, not {num_classes}")
    return model_class(arch)(num_classes=num_classes)
