"""Configuration, the loading half: a TOML file and overrides → one checked `Settings`.

Sources, later ones winning: field defaults, the file (`serve --config`), then explicit overrides
from the command line. TOML gives no type safety, so every value is checked against its field's
type hint and `Range` here, and a wrong one is a ValueError naming its key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from service.core.config import (
    AdmissionSettings,
    AuditSettings,
    BackendSettings,
    BudgetSettings,
    IdentitySettings,
    JournalSettings,
    LimitSettings,
    OpaSettings,
    Range,
    ServerSettings,
    Settings,
    TracingSettings,
    WatchSettings,
)


def load_settings(
    path: Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Settings:
    """Build settings from defaults, an optional TOML file, then overrides (section → fields)."""
    sections: dict[str, dict[str, Any]] = {}
    if path is not None:
        with path.open("rb") as handle:
            sections = {k: dict(v) for k, v in tomllib.load(handle).items()}
    for name, values in (overrides or {}).items():
        sections.setdefault(name, {}).update(values)
    unknown = set(sections) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ValueError(f"unknown settings section(s): {', '.join(sorted(unknown))}")
    built = {f.name: _build(f.type, sections.get(f.name, {})) for f in dataclasses.fields(Settings)}
    return Settings(**built)


def _build(type_name: Any, values: Mapping[str, Any]) -> Any:
    cls = {c.__name__: c for c in _SECTIONS}[
        type_name if isinstance(type_name, str) else type_name.__name__
    ]
    section = next(f.name for f in dataclasses.fields(Settings) if f.type == cls.__name__)
    return _fields(cls, section, values)


def _fields(cls: type, where: str, values: Mapping[str, Any]) -> Any:
    """`cls` built from `values`, each checked against its type hint (`where` names them)."""
    hints = get_type_hints(cls, include_extras=True)
    unknown = set(values) - set(hints)
    if unknown:
        raise ValueError(f"unknown setting(s) in [{where}]: {', '.join(sorted(unknown))}")
    return cls(**{k: _checked(f"{where}.{k}", hints[k], v) for k, v in values.items()})


def _checked(key: str, hint: Any, value: Any) -> Any:
    """`value` as the setting's type, or ValueError naming the key (TOML gives no type safety)."""
    base, limits = hint, []
    if get_origin(hint) is Annotated:
        base, *limits = get_args(hint)
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false")
    if base is str and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    if get_origin(base) is tuple and dataclasses.is_dataclass(get_args(base)[0]):
        return _tables(key, get_args(base)[0], value)
    if get_origin(base) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: expected a list of strings")
        return tuple(value)
    if base in (int, float):
        return _number(key, base, value, limits)
    if get_origin(base) is Literal and value not in get_args(base):
        choices = " or ".join(f'"{choice}"' for choice in get_args(base))
        raise ValueError(f"{key}: expected {choices}")
    return value


def _tables(key: str, cls: Any, value: Any) -> tuple[Any, ...]:
    """A TOML array of tables (`[[identity.jwt_issuers]]`), each built as `cls`."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key}: expected an array of tables ([[{key}]])")
    built = []
    for index, item in enumerate(value):
        if isinstance(item, cls):
            built.append(item)
        elif isinstance(item, Mapping):
            built.append(_fields(cls, f"{key}[{index}]", item))
        else:
            raise ValueError(f"{key}[{index}]: expected a table")
    return tuple(built)


def _number(key: str, base: type, value: Any, limits: list[Range]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, e.g. {'50051' if base is int else '0.5'}")
    if base is int and not isinstance(value, int):
        raise ValueError(f"{key}: expected a whole number")
    if not math.isfinite(value):
        raise ValueError(f"{key}: expected a finite number")
    for limit in limits:
        if not limit.admits(value):
            raise ValueError(f"{key}: must be {limit.describe()}")
    return value


_SECTIONS: tuple[type, ...] = (
    ServerSettings,
    IdentitySettings,
    OpaSettings,
    BackendSettings,
    LimitSettings,
    WatchSettings,
    AdmissionSettings,
    BudgetSettings,
    JournalSettings,
    TracingSettings,
    AuditSettings,
)
