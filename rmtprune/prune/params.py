"""The valid values of a pruner's arguments, declared once, on the class (as scikit-learn's
``_parameter_constraints``): the constructor checks them, config validation checks the same declarations::

    class Arm(Pruner):
        _parameter_constraints = {"alpha": Interval(0, 0.5, "()")}

Each pruner class declares ``{argument: Constraint}``; :func:`check_params` reads the declarations of the
class and of its bases, so an argument is declared where it is introduced and inherited from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rmtprune.prune.events import is_count, is_real


class ParamError(ValueError):
    """A pruner argument out of range; ``key`` names it, ``text`` says what it must be."""

    def __init__(self, key: str, value: Any, text: str, choices: tuple[str, ...] | None = None) -> None:
        super().__init__(f"{key} must be {text}, got {value!r}")
        self.key, self.value, self.text, self.choices = key, value, text, choices


class Constraint:
    """A test of one value and what it says of the valid values (``text``: "in (0, 0.5)")."""

    def __init__(self, text: str, test: Callable[[Any], bool], none: bool = False) -> None:
        self.text = f"{text} or None" if none else text
        self.test, self.none = test, none

    def ok(self, value: Any) -> bool:
        return (self.none and value is None) or (value is not None and self.test(value))


class Interval(Constraint):
    """A finite real number in an interval; ``ends`` says which ends are closed: "[]", "(]", "[)", "()"."""

    def __init__(self, lo: float, hi: float = float("inf"), ends: str = "[]", *, none: bool = False,
                 text: str | None = None) -> None:
        def test(v: Any) -> bool:
            return is_real(v) and (v >= lo if ends[0] == "[" else v > lo) and (v <= hi if ends[1] == "]" else v < hi)

        super().__init__(text or f"in {ends[0]}{lo:g}, {hi:g}{ends[1]}", test, none)


class Integer(Constraint):
    """An integer (not a bool) >= ``low``."""

    def __init__(self, low: int, *, none: bool = False, text: str | None = None) -> None:
        super().__init__(text or f"an integer >= {low}", lambda v: is_count(v, low), none)


class OneOf(Constraint):
    """One of a few names (``values``: the one declaration of them)."""

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = tuple(values)
        super().__init__(f"one of {', '.join(self.values)}", lambda v: isinstance(v, str) and v in self.values)


class Flag(Constraint):
    def __init__(self) -> None:
        super().__init__("True or False", lambda v: isinstance(v, (bool, np.bool_)))


def constraints(cls: type) -> dict[str, Constraint]:
    """The ``_parameter_constraints`` of ``cls`` and its bases, a subclass's declaration winning."""
    out: dict[str, Constraint] = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("_parameter_constraints", {}))
    return out


def check_params(cls: type, **values: Any) -> None:
    """Raise :class:`ParamError` (a ValueError naming the argument) for the first of ``values`` that its
    declaration on ``cls`` refuses; arguments without a declaration are not checked here."""
    table = constraints(cls)
    for key, value in values.items():
        if key in table and not table[key].ok(value):
            raise ParamError(key, value, table[key].text, getattr(table[key], "values", None))
