"""Checks of the keyword values a model is built with, shared by every family.

Each raises a one-line ValueError naming the keyword, the value it got and what is allowed,
before any parameter is created: "stem must be one of 'imagenet', 'cifar', got 'deep'".
"""

from __future__ import annotations

from collections.abc import Collection


def is_positive_int(value: object) -> bool:
    """An int (not a bool) of at least 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_number(value: object) -> bool:
    """An int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check(name: str, value: object, allowed: str, ok: bool) -> None:
    """Refuse `value` of keyword `name` unless `ok`; `allowed` says what would be."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_choice(name: str, value: object, allowed: Collection) -> None:
    """One of the `allowed` values."""
    check(name, value, f"one of {', '.join(map(repr, allowed))}", value in allowed)


def check_flag(name: str, value: object) -> None:
    """An on/off keyword: a bool."""
    check(name, value, "True or False", isinstance(value, bool))


def check_positive_int(name: str, value: object) -> None:
    """A count or width: an int of at least 1."""
    check(name, value, "a positive int", is_positive_int(value))


def check_rate(name: str, value: object) -> None:
    """A dropout or drop-path probability: a number in [0, 1)."""
    check(name, value, "in [0, 1)", is_number(value) and 0 <= value < 1)


def check_non_negative(name: str, value: object) -> None:
    """A scale where 0 means "off", such as an initialisation's standard deviation."""
    check(name, value, "a number >= 0", is_number(value) and value >= 0)
