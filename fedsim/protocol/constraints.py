"""Parameter constraints a plug-in declares and configuration validation reads (scikit-learn's style).

A strategy or partitioner class carries `_parameter_constraints`, a mapping from each constructor argument to a
list of constraints; a value is allowed when it satisfies any of them:

    _parameter_constraints = {
        "beta": [Interval(Real, 0, None, closed="left")],
        "measure": [Options({"kl", "l2", "l1", "cosine"})],
        "server_lr": [Interval(Real, 0, None, closed="neither"), Options({"auto"})],
        "pca_components": [Interval(Integral, 1, None, closed="left"), None],
    }

`check_parameters` raises `InvalidParameter` naming the first bad argument, its value and what is allowed, before
the class is built and before any data loads. Constraints merge along the class hierarchy, a subclass's entry
replacing its base's. A constraint is an `Interval`, `Options` or `Items`, a type (`str`, `bool`, `list`, ...), None
(the value null), or any object with `allows(value)` and a `__str__` that says what it allows (`Constraint`). Rules
that tie several arguments together go in a classmethod `check_arguments(arguments)` that raises `InvalidParameter`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Constraint", "Integral", "Interval", "InvalidParameter", "Items", "Options", "Real", "check_parameters",
           "parameter_constraints"]


@runtime_checkable
class Constraint(Protocol):
    """What a parameter constraint offers: whether it allows a value, and (as its text) what it allows."""

    def allows(self, value: Any) -> bool: ...


class InvalidParameter(ValueError):
    """A value no constraint of its parameter allows; `allowed` says what would be."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class Interval:
    """A number of `kind` (`Real` or `Integral`) between `left` and `right` (None: unbounded); `closed` says which
    ends belong to it. Booleans are never numbers here."""

    kind: type
    left: float | None
    right: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if (self.left is not None
                and (value < self.left or (value == self.left and self.closed in ("right", "neither")))):
            return False
        return not (self.right is not None
                    and (value > self.right or (value == self.right and self.closed in ("left", "neither"))))

    def __str__(self) -> str:
        noun = "an integer" if self.kind is Integral else "a number"
        if self.left is not None and self.right is not None:
            low = "[" if self.closed in ("left", "both") else "("
            high = "]" if self.closed in ("right", "both") else ")"
            return f"{noun} in {low}{self.left:g}, {self.right:g}{high}"
        if self.left is not None:
            return f"{noun} {'>=' if self.closed in ('left', 'both') else '>'} {self.left:g}"
        if self.right is not None:
            return f"{noun} {'<=' if self.closed in ('right', 'both') else '<'} {self.right:g}"
        return noun


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings, usually)."""

    values: frozenset

    def __init__(self, values: Iterable[Any]) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def allows(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:  # an unhashable value (a list) is none of them
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(sorted(map(str, self.values)))


@dataclass(frozen=True)
class Items:
    """A non-empty list whose every item `item` allows, of exactly `length` items when given; `text` says what it
    allows in the plug-in's own words."""

    item: Constraint
    length: int | None = None
    text: str | None = None

    def allows(self, value: Any) -> bool:
        return (isinstance(value, list) and bool(value) and (self.length is None or len(value) == self.length)
                and all(self.item.allows(entry) for entry in value))

    def __str__(self) -> str:
        count = f"{self.length} " if self.length is not None else ""
        return self.text or f"a list of {count}items, each {self.item}"


Allowed = Constraint | type | None


def _allows(constraint: Allowed, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (constraint is not bool and isinstance(value, bool))
    return constraint.allows(value)


def _describe(constraint: Allowed) -> str:
    if constraint is None:
        return "null"
    if isinstance(constraint, type):
        return ({list: "a list", dict: "a mapping", str: "a string", bool: "true or false"}
                .get(constraint, constraint.__name__))
    return str(constraint)


def parameter_constraints(cls: type) -> dict[str, list[Allowed]]:
    """`_parameter_constraints` merged along the class hierarchy (a subclass's entry replaces its base's)."""
    merged: dict[str, list[Allowed]] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("_parameter_constraints", {}))
    return merged


def check_parameters(constraints: Mapping[str, list[Allowed]], values: Mapping[str, Any]) -> None:
    """Raise `InvalidParameter` for the first value (in `values` order) that none of its constraints allows.

    Arguments without a declared constraint pass: the class's own checks still run when it is built.
    """
    for name, value in values.items():
        allowed = constraints.get(name)
        if allowed is None or any(_allows(constraint, value) for constraint in allowed):
            continue
        raise InvalidParameter(name, value, " or ".join(_describe(constraint) for constraint in allowed))
