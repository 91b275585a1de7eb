"""Field metadata for option dataclasses: allowed ranges and choices, checked in one place.

The config loader (`sorter.config`) reads this metadata to reject a bad value with the file,
line and key; `check_fields` applies the same rules to a dataclass built in code (its
`__post_init__`), so `LocatorConfig(scale=3)` fails the same way `[locate] scale = 3` does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sorter.errors import ConfigError


class FieldError(ConfigError):
    """A field of an option dataclass out of its range: `section.key: problem`."""

    def __init__(self, section: str, key: str, problem: str) -> None:
        super().__init__(f"{section}.{key}: {problem}")
        self.key = key
        """The field's name."""
        self.problem = problem
        """What is wrong, e.g. "must be <= 1, got 3"."""


def rng(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Any:
    """Field metadata: the allowed range of a number (inclusive unless lo_open)."""
    return {"min": lo, "max": hi, "lo_open": lo_open}


def choices(*values: str) -> Any:
    """Field metadata: the allowed values of a string."""
    return {"choices": values}


def number_problem(value: float, meta: Any) -> str | None:
    """What is wrong with `value` for a field with this metadata, or None."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    lo, hi = (meta or {}).get("min"), (meta or {}).get("max")
    lo_open = (meta or {}).get("lo_open", False)
    if lo is not None and (value <= lo if lo_open else value < lo):
        op = ">" if lo_open else ">="
        return f"must be {op} {lo:g}, got {value:g}"
    if hi is not None and value > hi:
        return f"must be <= {hi:g}, got {value:g}"
    return None


def choice_problem(value: str, meta: Any) -> str | None:
    """What is wrong with `value` for a string field with this metadata, or None."""
    allowed = (meta or {}).get("choices")
    if allowed and value not in allowed:
        return f"must be one of {', '.join(allowed)}, got {value!r}"
    return None


def check_fields(obj: Any, section: str) -> None:
    """FieldError ("section.key: must be ...") for the first field of the dataclass `obj`
    outside its metadata's range or choices (tuples: every element)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            problem = None
            if isinstance(v, str):
                problem = choice_problem(v, f.metadata)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                problem = number_problem(float(v), f.metadata)
            if problem:
                raise FieldError(section, f.name, problem)
