"""Open streams per principal: how many UpdateImageSetMetadata and WatchUpdate streams one caller
holds open at once in this process, bounded by `limits.max_streams_per_principal`.

An idle stream costs little, but thousands from one caller are memory and file descriptors the
others need: beyond the bound a new stream is refused RESOURCE_EXHAUSTED with RetryInfo before any
work, and its caller closes one or retries later. Counted per process (each replica bounds its
own); the metrics carry no principal (unbounded cardinality): the busiest principal's count and
the refusals by RPC.
"""

from __future__ import annotations

from service.core.config import LimitSettings
from service.core.errors import ResourceExhausted
from service.observability.metrics import Metrics


class OpenStreams:
    """Counts each principal's open streams; `hold` takes one slot or refuses."""

    def __init__(self, limits: LimitSettings, metrics: Metrics) -> None:
        self._limit = limits.max_streams_per_principal
        self._retry_after = limits.retry_after_seconds
        self._held: dict[str, int] = {}
        self._refusals = metrics.stream_refusals
        metrics.busiest_streams.set_function(self.busiest)

    def hold(self, principal: str, rpc: str) -> Slot:
        """One more open stream for `principal`, released when the returned slot's block ends."""
        held = self._held.get(principal, 0)
        if held >= self._limit:
            self._refusals.labels(rpc).inc()
            raise ResourceExhausted(
                f"this caller already holds {self._limit} open streams "
                "(limits.max_streams_per_principal); close one or retry later",
                self._retry_after,
                reason="TOO_MANY_STREAMS",
            )
        self._held[principal] = held + 1
        return Slot(self, principal)

    def release(self, principal: str) -> None:
        left = self._held[principal] - 1
        if left:
            self._held[principal] = left
        else:
            del self._held[principal]  # no entry per principal that once called

    def held(self, principal: str) -> int:
        return self._held.get(principal, 0)

    def busiest(self) -> float:
        """The most streams any one principal holds open now."""
        return max(self._held.values(), default=0)


class Slot:
    """One open stream of one principal (a plain object: an idle stream holds it for hours)."""

    __slots__ = ("_principal", "_streams")

    def __init__(self, streams: OpenStreams, principal: str) -> None:
        self._streams = streams
        self._principal = principal

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self._streams.release(self._principal)
