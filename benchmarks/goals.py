"""Issue 12's goals as verdicts: each a figure measured in one run against its target."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from benchmarks import measure

Goal = dict[str, Any]
"""{goal, measured, target, met}: met is None when the run did not measure it."""


def at_most(goal: str, measured: float, target: float) -> Goal:
    met = None if math.isnan(measured) else measured <= target
    return {"goal": f"{goal} ≤ {target:g}", "measured": measured, "target": target, "met": met}


def at_least(goal: str, measured: float, target: float) -> Goal:
    met = None if math.isnan(measured) else measured >= target
    return {"goal": f"{goal} ≥ {target:g}", "measured": measured, "target": target, "met": met}


def verdict(goal: Goal) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]


def table(goals: Sequence[Goal]) -> str:
    rows = [[g["goal"], _figure(g["measured"]), verdict(g)] for g in goals]
    return measure.table(["goal (issue 12)", "measured", "verdict"], rows)


def _figure(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


def overhead(summary: dict[str, Any]) -> list[Goal]:
    """Benchmark 1's goals, from `overhead.summarise` plus `components.measure_steps`."""
    c1, c64 = _row(summary, 1), _row(summary, 64)
    steps = summary["components_c1"]
    authorized = _get(c1, "proxy_authorized_ms", "p50")
    return [
        at_most("proxy CPU per lifecycle at concurrency 64, ms", _cpu_ms(c64), 1.6),
        at_least("throughput proxy/direct at concurrency 64", _get(c64, "ratio_median"), 0.7),
        at_most("added latency at concurrency 1, p50 ms", _added(c1, "p50"), 1.0),
        at_most("added latency at concurrency 1, p99 ms", _added(c1, "p99"), 5.0),
        at_most("EvaluateUpdate p50 - (trivial unary p50 + OPA p50), ms", steps["excess_ms"], 0.15),
        at_most("`authorized` event at concurrency 1, p50 ms", authorized, 1.2),
    ]


def _row(summary: dict[str, Any], concurrency: int) -> dict[str, Any]:
    rows = [r for r in summary["by_concurrency"] if r["concurrency"] == concurrency]
    return rows[0] if rows else {}


def _get(row: dict[str, Any], *keys: str) -> float:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return float(value)


def _cpu_ms(row: dict[str, Any]) -> float:
    return _get(row, "cpu_us_per_update", "proxy", "proxy-0") / 1000


def _added(row: dict[str, Any], quantile: str) -> float:
    return _get(row, "proxy_ms", quantile) - _get(row, "direct_ms", quantile)
