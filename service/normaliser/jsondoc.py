"""Strict JSON for attribute documents: what HealthImaging would refuse never gets past loading.

Pure (no I/O). Refused: empty or non-UTF-8 bytes, duplicate keys, NaN/Infinity, numbers that
overflow to infinity (`1e999`: `parse_constant` never sees them), integers beyond 64 bits, lone
surrogates (`"\\ud800"`) in keys or strings, and nesting deep enough to exhaust the parser.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

Path = tuple[str | int, ...]

INT_MIN: Final = -(2**63)  # SV's minimum: no DICOM integer is smaller
INT_MAX: Final = 2**64 - 1  # UV's maximum: no DICOM integer is larger

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWABLE_KEY = re.compile(r"[A-Za-z0-9._,() -]{1,64}")


class JsonProblem(ValueError):
    """Why a blob is not acceptable JSON, and where (a path of keys/indexes, () for the blob)."""

    def __init__(self, description: str, path: Path = ()) -> None:
        super().__init__(description)
        self.description = description
        self.path = path


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__("duplicate key")
        self.key = key


def load(blob: bytes) -> object:
    """The blob's JSON value; raises JsonProblem (never naming a value, only keys)."""
    if not blob:
        raise JsonProblem("must not be empty")
    try:
        text = blob.decode("utf-8")  # Python's decoder refuses encoded surrogates itself
    except UnicodeDecodeError:
        raise JsonProblem("must be UTF-8 encoded JSON") from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except JsonProblem:
        raise
    except _Duplicate as exc:
        raise JsonProblem(f"duplicate JSON key {shown(exc.key)}") from None
    except RecursionError:
        raise JsonProblem("JSON nested too deeply") from None
    except ValueError:
        raise JsonProblem("must be valid JSON") from None
    if "\\u" in text:  # only an escape can produce a lone surrogate
        _no_lone_surrogates(document, ())
    return document


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


def _no_constant(_name: str) -> object:
    raise JsonProblem("NaN and Infinity are not JSON numbers")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise JsonProblem("numbers must be finite (a number overflows a 64-bit float)")
    return number


def _bounded_int(text: str) -> int:
    if len(text) > 21:  # longer than any 64-bit integer, whatever its sign
        raise JsonProblem("integers must fit in 64 bits")
    number = int(text)
    if not INT_MIN <= number <= INT_MAX:
        raise JsonProblem("integers must fit in 64 bits")
    return number


def _no_lone_surrogates(value: object, path: Path) -> None:
    if isinstance(value, str):
        if not _encodable(value):
            raise JsonProblem("strings must not contain lone surrogates (\\ud800-\\udfff)", path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):
                raise JsonProblem("keys must not contain lone surrogates (\\ud800-\\udfff)", path)
            _no_lone_surrogates(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_lone_surrogates(item, (*path, index))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(key: str) -> str:
    """A key as it may appear in an error: printable identifiers only."""
    return f'"{key}"' if _SHOWABLE_KEY.fullmatch(key) else "(unprintable key)"


def field_path(prefix: str, path: Path) -> str:
    """`prefix.Study.Series["1.2.3"].DICOM[0]`: plain keys dotted, others bracketed."""
    parts = [prefix]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_KEY.fullmatch(part):
            parts.append(f".{part}")
        else:
            parts.append(f"[{shown(part)}]")
    return "".join(parts)
