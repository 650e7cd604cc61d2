"""Type checks for the fields of frozen config dataclasses, wherever their values come from.

Configs arrive from Python code, CLI flags, ``--set FIELD=VALUE``, ``--config`` files and
a run's ``config.json``. Each field is checked against its annotation here, once, so a
JSON ``true`` never becomes the integer 1 and a string ``"no"`` never becomes a truthy
boolean. Lists become tuples, so a frozen config really cannot change.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from paraformer.errors import ConfigError

# Larger integers overflow torch's int64 (seeds, sizes) long before they make sense.
INT_LIMIT = 2**63 - 1
FLOAT_LIMIT = 10**308  # integers beyond this are not finite floats


def describe_type(hint: Any) -> str:
    """A phrase for error messages: 'an integer', 'true or false', 'a list of integers'..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(kinds)
        return f"{text} or null" if type(None) in args else text
    if origin is tuple:
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (dict, Mapping) or hint is dict:
        return "a JSON object"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Any: "any value",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits ``hint``, and its normalised form.

    Booleans are not integers, strings are not booleans, integers must fit int64, floats
    must be finite (an integer is accepted where a float is expected), lists become tuples
    and mappings become plain dicts.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            ok, out = coerce(value, option)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and -INT_LIMIT <= value <= INT_LIMIT
        return ok, value
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        # the range first: an integer too large for a float must not reach float()
        ok = number and (abs(value) <= FLOAT_LIMIT if isinstance(value, int) else math.isfinite(value))
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0]
        out = []
        for v in value:
            ok, v = coerce(v, item)
            if not ok:
                return False, value
            out.append(v)
        return True, tuple(out)
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return False, value
        return True, dict(value)
    raise TypeError(f"unsupported config annotation {hint!r}")  # a programming error, not user input


def check_fields(obj: Any) -> None:
    """Check and normalise every field of the frozen dataclass ``obj`` in place.

    Raises ``ConfigError`` naming the first field whose value does not fit its type.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, normalised = coerce(value, hints[f.name])
        if not ok:
            raise ConfigError(
                f"{f.name} must be {describe_type(hints[f.name])}, got {_short(value)} ({_json_type(value)})."
            )
        if normalised is not value:
            object.__setattr__(obj, f.name, normalised)


def from_mapping(cls: type, data: Any, what: str) -> Any:
    """Build the dataclass ``cls`` from a JSON object, rejecting unknown fields by name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a JSON object, got {_json_type(data)}.")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}.")
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{what} lacks the field(s) {missing}.")
    return cls(**data)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    """``repr(value)``, shortened: a 400-digit number is not worth a screen."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"
