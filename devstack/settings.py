"""Local stack: settings files for the proxy and the emulator, and the quota settings they share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

Sections = Mapping[str, Mapping[str, object]]
"""A settings file as sections: section → field → value (`serve --config` or the emulator's)."""

NO_BUDGET: Sections = {"budget": {"enabled": False}}
"""The proxy without quota budgets: for an emulator run with --no-quotas."""


def toml(sections: Sections) -> str:
    """TOML for sections of scalars, lists and inline tables; dotted names are nested tables.

    JSON's scalars (strings, numbers, true/false) are valid TOML values.
    """
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_value(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    """One TOML value: a mapping becomes an inline table (`[[a.b]]` tables as a list of them)."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(value)


def write_toml(path: Path, sections: Sections) -> Path:
    """`sections` as a TOML file at `path` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml(sections))
    return path


def merged(*layers: Sections) -> dict[str, dict[str, object]]:
    """Sections layered field by field: a later layer's value wins."""
    result: dict[str, dict[str, object]] = {}
    for layer in layers:
        for section, values in layer.items():
            result.setdefault(section, {}).update(values)
    return result


def update_quota(rate: float, burst: float) -> Sections:
    """Emulator settings enforcing this UpdateImageSetMetadata quota (others: AWS defaults)."""
    return {"quotas.tps.UpdateImageSetMetadata": {"rate": rate, "burst": burst}}


def shared_by_replicas(redis_url: str) -> Sections:
    """Proxy settings for replicas sharing one journal and one quota budget in Redis."""
    return {"journal": {"url": redis_url}, "budget": {"url": redis_url}}
