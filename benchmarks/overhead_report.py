"""Benchmark 1's tables: the summary `overhead.summarise` makes, as markdown."""

from __future__ import annotations

import math
from typing import Any

from benchmarks import goals, measure


def report(summary: dict[str, Any]) -> str:
    rows = summary["by_concurrency"]
    throughput = measure.table(
        THROUGHPUT_COLUMNS,
        [
            [
                r["concurrency"],
                r["direct_per_s"],
                r["proxy_per_s"],
                r["ratio_median"],
                ", ".join(f"{x:.2f}" for x in r["ratios"]),
                "{direct:.2f} / {proxy:.2f}".format(**r["get_image_set_per_lifecycle"]),
            ]
            for r in rows
        ],
    )
    latency = measure.table(LATENCY_COLUMNS, [_latency_row(r) for r in rows])
    cpu = measure.table(
        ["concurrency", "mode", *CPU_PROCESSES.values()],
        [
            [r["concurrency"], mode, *(_cpu(r, mode, p) for p in CPU_PROCESSES)]
            for r in rows
            for mode in ("direct", "proxy")
        ],
    )
    parts = summary["components_c1"]
    steps = measure.table(
        ["step, one call at a time (interleaved rounds)", "p50 / p99 ms"],
        [[label, _pair(parts[key])] for key, label in COMPONENTS.items() if key in parts]
        + [["EvaluateUpdate p50 - (trivial unary p50 + OPA p50)", f"{parts['excess_ms']:.3f}"]],
    )
    verdicts = goals.table(summary["goals"])
    tables = [throughput, latency, "CPU per lifecycle, by process:", cpu, steps, verdicts]
    return "\n\n".join(tables)


THROUGHPUT_COLUMNS = (
    "concurrency",
    "direct /s",
    "proxy /s",
    "proxy/direct (median of pairs)",
    "pair ratios",
    "GetImageSet per lifecycle direct / proxy",
)
LATENCY_COLUMNS = (
    "concurrency",
    "lifecycle direct p50/p99 ms",
    "via proxy p50/p99 ms",
    "added p50/p99 ms",
    "submit direct p50/p99 ms",
    "submit via proxy p50/p99 ms",
    "added p50/p99 ms",
    "`authorized` event p50/p99 ms",
)
CPU_PROCESSES = {
    "client": "client µs",
    "proxy-0": "proxy µs",
    "opa": "OPA µs",
    "emulator": "emulator µs",
}


COMPONENTS = {
    "trivial_unary_ms": "EvaluateUpdate on a trivial grpc.aio server (gRPC's own cost)",
    "opa_decision_ms": "OPA decision (HTTP POST from Python, the proxy's input)",
    "evaluate_update_ms": "EvaluateUpdate (gRPC unary: identity, normaliser, OPA)",
    "opa_server_handler_ms": "of an OPA decision, OPA's own handler (its `?metrics=true` timer)",
}


def _pair(values: dict[str, float]) -> str:
    return f"{values['p50']:.2f} / {values['p99']:.2f}"


def _latency_row(r: dict[str, Any]) -> list[object]:
    added = {k: r["proxy_ms"][k] - r["direct_ms"][k] for k in ("p50", "p99")}
    added_submit = {k: r["proxy_submit_ms"][k] - r["direct_submit_ms"][k] for k in ("p50", "p99")}
    return [
        r["concurrency"],
        _pair(r["direct_ms"]),
        _pair(r["proxy_ms"]),
        _pair(added),
        _pair(r["direct_submit_ms"]),
        _pair(r["proxy_submit_ms"]),
        _pair(added_submit),
        _pair(r["proxy_authorized_ms"]),
    ]


def _cpu(row: dict[str, Any], mode: str, process: str) -> float:
    return float(row["cpu_us_per_update"][mode].get(process, math.nan))
