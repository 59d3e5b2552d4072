"""Typed, bounded settings: one ``Bounds`` per setting says what it admits, and ``Bounds.check`` is the one
validator every entry point goes through (`run` flags, ``--set``, sweep files, upstream options and recipes, the
Python API), so a value refused in one place is refused in all of them with the same line.

Integers must be integral (``2.0`` is 2, ``1.7`` is refused; ``True`` is not an integer), numbers finite (NaN and
infinities are refused everywhere), text numbers are read as numbers (YAML 1.1 reads ``1e-3`` as a string).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import TransferbenchError

_KIND_NAMES = {int: "an integer", float: "a finite number", str: "text", bool: "true or false", tuple: "a list"}


class OutOfBounds(ValueError):
    """Why a value does not fit its bounds (a short phrase, without the value or the setting's name)."""


@dataclass(frozen=True)
class Bounds:
    """What one setting admits: its ``kind`` (int, float, str, bool or tuple), for numbers a range whose ends are
    closed unless ``low_open``/``high_open``, for text its ``choices``, for a tuple the bounds of each ``item`` and
    the fewest items. ``optional``: ``None`` is admitted (a default chosen later)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    item: Bounds | None = None
    min_items: int = 0
    optional: bool = False

    def __str__(self) -> str:
        """The admitted values in words, e.g. ``an integer >= 1``, ``a finite number in (0, 1)``."""
        if self.kind is tuple:
            text = f"a list, each item {self.item}" if self.item else "a list"
            text += f", at least {self.min_items} item(s)" if self.min_items else ""
        elif self.choices:
            text = "one of " + ", ".join(c or repr(c) for c in self.choices)
        else:
            text = _KIND_NAMES[self.kind] + self._range_text()
        return text + (" (or none: the default)" if self.optional else "")

    def _range_text(self) -> str:
        low, high = (None if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in (self.low, self.high))
        if low is not None and high is not None:
            return f" in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            return f" {'>' if self.low_open else '>='} {low}"
        if high is not None:
            return f" {'<' if self.high_open else '<='} {high}"
        return ""

    def parse(self, value: Any) -> Any:
        """``value`` as this setting's kind (no range check): a whole float or a numeric text as an int, an int or a
        numeric text as a float, a list, a comma-separated text or a single number as a tuple of parsed items.
        Raises ``OutOfBounds`` with the reason."""
        if value is None and self.optional:
            return None
        if self.kind is tuple:
            return tuple(self._parse_item(v) for v in _items(value))
        if self.kind is bool:
            if not isinstance(value, bool):
                raise OutOfBounds("not true or false")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise OutOfBounds("not text")
            return value
        if isinstance(value, bool):
            raise OutOfBounds("a boolean, not a number")
        return _integer(value) if self.kind is int else _number(value)

    def _parse_item(self, value: Any) -> Any:
        try:
            return self.item.parse(value) if self.item else value
        except OutOfBounds as exc:
            raise OutOfBounds(f"item {value!r} is {exc}") from None

    def coerce(self, value: Any) -> Any:
        """``value`` parsed (``parse``) and checked against the range, choices and item count."""
        parsed = self.parse(value)
        if parsed is None:
            return None
        if self.kind is tuple:
            if len(parsed) < self.min_items:
                raise OutOfBounds(f"{len(parsed)} item(s)")
            for raw, item in zip(_items(value), parsed, strict=True):
                if self.item and (reason := self.item._problem(item)):
                    raise OutOfBounds(f"item {raw!r} is {reason}")
            return parsed
        if reason := self._problem(parsed):
            raise OutOfBounds(reason)
        return parsed

    def _problem(self, parsed: Any) -> str:
        if self.choices:
            return "" if parsed in self.choices else "not one of the choices"
        if self.kind not in (int, float):
            return ""
        too_low = self.low is not None and (parsed <= self.low if self.low_open else parsed < self.low)
        too_high = self.high is not None and (parsed >= self.high if self.high_open else parsed > self.high)
        return "out of range" if too_low or too_high else ""

    def check(self, value: Any, name: str, where: str = "") -> Any:
        """``value`` coerced (``coerce``), or a one-line error naming ``name`` (a flag, ``--seed``, is written as on
        a command line: ``--seed -1: ...``; else ``bad value -1 for NAME: ...``), after ``where`` (the file), and
        saying what it admits."""
        try:
            return self.coerce(value)
        except OutOfBounds as exc:
            head = f"{name} {value!r}" if name.startswith("--") else f"bad value {value!r} for {name}"
            raise TransferbenchError(f"{where}{head}: {exc}; allowed: {self}") from None


def _items(value: Any) -> list:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):  # "30,60" or "[30, 60]" from a command line
        return [v.strip() for v in value.strip().strip("[]()").split(",") if v.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    raise OutOfBounds("not a list")


def _integer(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = _number(value, "not an integer")
    if not number.is_integer():
        raise OutOfBounds("not a whole number")
    return int(number)


def _number(value: Any, not_a_number: str = "not a number") -> float:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise OutOfBounds(not_a_number) from None
    except OverflowError:  # an int beyond a float's range
        raise OutOfBounds("not finite") from None
    if not math.isfinite(number):
        raise OutOfBounds("not finite")
    return number


def check_fields(obj: Any, name_of: Any) -> None:
    """Every field of the dataclass ``obj`` whose metadata has ``bounds``, checked and set to its coerced value
    (frozen dataclasses too: this is their ``__post_init__``). ``name_of(field_name)`` names it in errors."""
    for f in fields(obj):
        bounds = f.metadata.get("bounds")
        if bounds is not None:
            object.__setattr__(obj, f.name, bounds.check(getattr(obj, f.name), name_of(f.name)))


# Settings several commands share
SEED = Bounds(int, low=0, high=2**32 - 1)  # numpy's and scikit-learn's random_state admit [0, 2**32 - 1]
WORKERS = Bounds(int, low=0, optional=True)  # loader processes; None: the default for the machine
