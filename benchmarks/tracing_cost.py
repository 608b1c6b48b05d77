"""Benchmark 1's tracing variant (`overhead --tracing both`): what tracing costs per update.

Two stacks run side by side in one run, the same but for the proxy's `[tracing]`: off, and on
(every trace sampled, exported over OTLP/gRPC to `otlp_sink`). Cells of proxy lifecycles
alternate between them; the CPU each stack's processes used is divided by the lifecycles done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from benchmarks import measure
from benchmarks.stack import StackOptions

MODES = ("off", "on")
EXPORT_DELAY_MS = 200
"""The traced proxy's batch export delay (OTEL_BSP_SCHEDULE_DELAY; the SDK's default is 5 s),
so the export of a cell's spans falls inside that cell's CPU window (see `SETTLE_SECONDS`)."""
SETTLE_SECONDS = 0.5
"""CPU keeps being counted this long after a cell's last lifecycle, in both modes."""


class MeasuredCell(Protocol):
    @property
    def mode(self) -> str: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def throughput(self) -> float: ...

    @property
    def cpu(self) -> Mapping[str, object]: ...

    def cpu_us_per_update(self, process: str) -> float: ...


def stack_options(image_sets: int, sink_endpoint: str) -> dict[str, StackOptions]:
    """The untraced and the traced stack, by mode."""
    traced = {"enabled": True, "endpoint": sink_endpoint, "insecure": True, "sample_ratio": 1.0}
    return {
        "off": StackOptions(image_sets=image_sets),
        "on": StackOptions(
            image_sets=image_sets,
            proxy_config={"tracing": traced},
            proxy_env={"OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_DELAY_MS)},
        ),
    }


def summarise(
    cells: Sequence[MeasuredCell], concurrency: Sequence[int], spans: int, traced_updates: int
) -> dict[str, Any]:
    """CPU per update by mode and process, and the traced/untraced ratio of the proxy's CPU."""
    return {
        "by_concurrency": [
            _row(level, [c for c in cells if c.concurrency == level]) for level in concurrency
        ],
        "spans_received": spans,
        "traced_updates": traced_updates,
        "spans_per_traced_update": spans / traced_updates if traced_updates else 0.0,
    }


def _row(concurrency: int, cells: Sequence[MeasuredCell]) -> dict[str, Any]:
    by_mode = {mode: [c for c in cells if c.mode == mode] for mode in MODES}
    ratios = [
        on.cpu_us_per_update("proxy-0") / off.cpu_us_per_update("proxy-0")
        for off, on in zip(by_mode["off"], by_mode["on"], strict=True)
    ]
    return {
        "concurrency": concurrency,
        "per_s": {mode: measure.median([c.throughput for c in by_mode[mode]]) for mode in MODES},
        "cpu_us_per_update": {
            mode: {
                process: measure.median([c.cpu_us_per_update(process) for c in mode_cells])
                for process in mode_cells[0].cpu
            }
            for mode, mode_cells in by_mode.items()
        },
        "proxy_cpu_ratio_median": measure.median(ratios),
        "proxy_cpu_ratios": ratios,
    }


COLUMNS = (
    "concurrency",
    "proxy µs/update, tracing off",
    "tracing on",
    "added µs",
    "on/off (median of pairs)",
    "pair ratios",
    "lifecycles/s off / on",
    "OPA µs off / on",
    "emulator µs off / on",
    "client+sink µs off / on",
)


def report(summary: dict[str, Any]) -> str:
    rows = []
    for row in summary["by_concurrency"]:
        cpu = row["cpu_us_per_update"]
        rows.append(
            [
                row["concurrency"],
                cpu["off"]["proxy-0"],
                cpu["on"]["proxy-0"],
                cpu["on"]["proxy-0"] - cpu["off"]["proxy-0"],
                row["proxy_cpu_ratio_median"],
                ", ".join(f"{r:.2f}" for r in row["proxy_cpu_ratios"]),
                "{off:.0f} / {on:.0f}".format(**row["per_s"]),
                *(
                    f"{cpu['off'][p]:.0f} / {cpu['on'][p]:.0f}"
                    for p in ("opa", "emulator", "client")
                ),
            ]
        )
    spans = (
        f"spans received by the sink: {summary['spans_received']:,} for "
        f"{summary['traced_updates']:,} traced lifecycles (warm-up included), "
        f"{summary['spans_per_traced_update']:.1f} each"
    )
    return "\n\n".join(
        ["CPU per update lifecycle, tracing off and on:", measure.table(COLUMNS, rows), spans]
    )
