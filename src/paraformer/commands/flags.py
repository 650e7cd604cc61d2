"""The parser machinery every command shares: flags generated from config fields, range-checked
integer and number flags, the common argument groups, and strict JSON output.

Every flag of every command is checked here, in one place: a value of the wrong type or
out of its range is a one-line usage error, never a traceback deeper in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from paraformer.files import json_text

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
INT_MAX = 2**63 - 1


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# ------------------------------------------------------------------------------ value types


def int_in(lo: int, hi: int = INT_MAX) -> Any:
    """An argparse type: an integer in ``lo..hi`` (checked before anything uses it)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            bound = f"{lo}..{hi}" if hi < INT_MAX else f">= {lo}"
            raise argparse.ArgumentTypeError(
                f"{text.strip()[:30]} is out of range: must be an integer {bound}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def number_in(lo: float, hi: float = math.inf, *, low_open: bool = False) -> Any:
    """An argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > lo if low_open else value >= lo) and value <= hi
        if not ok:
            low = f"> {lo:g}" if low_open else f">= {lo:g}"
            high = "" if hi == math.inf else f" and <= {hi:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {low}{high}, got {text.strip()[:30]}")
        return value

    parse.__name__ = "number"
    return parse


def whole_number(text: str) -> int:
    """An argparse type: any integer (a config field checks its range and names itself)."""
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text[:30]!r}") from None


def any_number(text: str) -> float:
    """An argparse type: any number (a config field checks that it is finite and in range)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:30]!r}") from None


def int_list(text: str) -> tuple[int, ...]:
    """``"5,6"`` -> ``(5, 6)``: a comma-separated list of integers (``""`` is the empty list)."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 5,6, got {text!r}"
        ) from None
    if any(abs(v) > INT_MAX for v in values):
        raise argparse.ArgumentTypeError(f"integers must fit 64 bits, got {text[:30]!r}")
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """``--set FIELD=VALUE``: VALUE is JSON (a bare word is a string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except (json.JSONDecodeError, ValueError):  # ValueError: integers too long for Python to parse
        return key.strip(), value


# ------------------------------------------------------------------------------ flags from configs


def config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """Add one flag per CLI field of the config dataclass ``cls`` (but ``skip``); return the field names.

    The flag, its type, choices and help text all come from the field, so a new field
    appears in ``--help`` without a second edit. Booleans get ``--x/--no-x``. Values are
    range-checked by the config itself when it is built (one line, naming the field).
    """
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", False) or f.name in skip:
            continue
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None or "default" in meta["help"] else f" (default {default})"
        kwargs: dict[str, Any] = {"help": meta["help"] + shown, "default": None, "dest": f.name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = int_list
            kwargs["metavar"] = meta.get("metavar") or "I,J,..."
        else:
            kwargs["type"] = {int: whole_number, float: any_number}.get(
                kind, kind
            )  # the config checks ranges
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = meta.get("metavar") or f.name.upper()
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
        names.append(f.name)
    return names


def given_flags(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


# ------------------------------------------------------------------------------ common groups


def set_arg(p: argparse.ArgumentParser) -> None:
    """``--set FIELD=VALUE`` (repeatable): model config overrides, collected in ``args.set``."""
    p.add_argument(
        "--set",
        action="append",
        type=parse_override,
        metavar="FIELD=VALUE",
        help="override a model config field, e.g. --set num_branches=8 (repeatable; VALUE is JSON)",
    )


def run_dir_arg(p: argparse.ArgumentParser, what: str = "a run folder") -> None:
    p.add_argument("run_dir", type=Path, help=what)


def weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", default="best", choices=("best", "last"), help="best-validation or last weights"
    )


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object (strict: no NaN)")


def progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def print_json(data: Any) -> None:
    """One line of strict JSON on stdout: non-finite numbers become null, as in every file."""
    print(json_text(data, indent=None))


def is_other_rank() -> bool:
    """True in every process of a distributed launch but the first (which alone prints results)."""
    return os.environ.get("RANK", "0") not in ("", "0")
