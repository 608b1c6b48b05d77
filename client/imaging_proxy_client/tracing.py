"""W3C trace context for the client's calls, when OpenTelemetry is installed (optional)."""

from __future__ import annotations

try:
    from opentelemetry import propagate
except ImportError:  # pragma: no cover - the library works without OpenTelemetry
    propagate = None  # type: ignore[assignment]


def with_trace_context(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current span's traceparent/tracestate, if any; else unchanged."""
    if propagate is None:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return metadata + tuple(carrier.items())
