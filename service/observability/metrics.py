"""Metrics: the proxy's Prometheus series, served on their own port; every label is bounded.

Labels are only ever an RPC name, a gRPC status code name, a backend operation name or a fixed
outcome word: never an attribute value, a principal, an image set or an operation id.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from service.core.errors import StartupError

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class Metrics:
    """Every series the proxy exports, in a registry of its own (several servers per process)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # CPU, memory, open files, start time
        PlatformCollector(registry=registry)  # python_info
        Info("imaging_proxy_build", "The running proxy's version.", registry=registry).info(
            {"version": _version(), "python": platform.python_version()}
        )
        self.decisions = Counter(
            "imaging_proxy_decisions",
            "Policy decisions by outcome (allowed, denied, unavailable) and reason: policy, "
            "no_role; or why OPA gave none (unreachable, timeout, http_error, undefined, "
            "malformed).",
            ["outcome", "reason"],
            registry=registry,
        )
        self.oldest_waiting = Gauge(
            "imaging_proxy_oldest_waiting_seconds",
            "Age of the longest-waiting request per stage: deciding (in the gate, being "
            "normalised and decided), queued (allowed, waiting for its turn to submit), watching "
            "(submitted, followed until HealthImaging finishes it); 0 if none.",
            ["stage"],
            registry=registry,
        )
        self.requests = Counter(
            "imaging_proxy_requests",
            "Finished RPCs by method and gRPC status code.",
            ["rpc", "outcome"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "imaging_proxy_open_streams", "Streaming RPCs open now.", ["rpc"], registry=registry
        )
        self.busiest_streams = Gauge(
            "imaging_proxy_open_streams_busiest_principal",
            "Streams the busiest principal holds open (bounded by "
            "limits.max_streams_per_principal).",
            registry=registry,
        )
        self.stream_refusals = Counter(
            "imaging_proxy_stream_refusals",
            "Streams refused because their principal held limits.max_streams_per_principal.",
            ["rpc"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "imaging_proxy_decision_seconds",
            "Policy decision latency.",
            buckets=_FAST,
            registry=registry,
        )
        self.gate_refusals = Counter(
            "imaging_proxy_gate_refusals",
            "Requests refused before any work (no_role).",
            ["reason"],
            registry=registry,
        )
        self.stage_waiting = Gauge(
            "imaging_proxy_stage_waiting",
            "Requests waiting their turn at a shared stage (decisions, reference_reads, polls).",
            ["stage"],
            registry=registry,
        )
        self.stage_refusals = Counter(
            "imaging_proxy_stage_refusals",
            "Requests refused while waiting at a shared stage (principal_full, deadline).",
            ["stage", "reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "imaging_proxy_queue_depth", "Updates waiting for their turn.", registry=registry
        )
        self.queue_wait_seconds = Histogram(
            "imaging_proxy_queue_wait_seconds",
            "Time from admission to submit.",
            buckets=_SLOW,
            registry=registry,
        )
        self.queue_refusals = Counter(
            "imaging_proxy_queue_refusals",
            "Updates refused by admission (queue_full, principal_full, deadline).",
            ["reason"],
            registry=registry,
        )
        self.backend_seconds = Histogram(
            "imaging_proxy_backend_seconds",
            "HealthImaging call latency by operation.",
            ["operation"],
            buckets=_FAST,
            registry=registry,
        )
        self.backend_calls = Counter(
            "imaging_proxy_backend_calls",
            "HealthImaging calls by operation and outcome (ok, throttled, error).",
            ["operation", "outcome"],
            registry=registry,
        )
        self.throttles = Counter(
            "imaging_proxy_backend_throttles",
            "Throttling answers from HealthImaging by operation.",
            ["operation"],
            registry=registry,
        )
        self.budget_tokens = Gauge(
            "imaging_proxy_budget_tokens",
            "Calls the quota budget would allow right now, by operation.",
            ["operation"],
            registry=registry,
        )
        self.budget_factor = Gauge(
            "imaging_proxy_budget_rate_factor",
            "Fraction of the configured rate in force (below 1 after throttling), by operation.",
            ["operation"],
            registry=registry,
        )
        self.poll_loops = Gauge(
            "imaging_proxy_poll_loops",
            "GetImageSet poll loops (one per image set).",
            registry=registry,
        )
        self.approvals = Counter(
            "imaging_proxy_approvals",
            "Updates the policy wanted approved (required), and approvers' verdicts (approved: "
            "one approval given; rejected).",
            ["outcome"],
            registry=registry,
        )
        self.break_glass = Counter(
            "imaging_proxy_break_glass",
            "Updates that went ahead without a required approval (break-glass), to review.",
            registry=registry,
        )
        self.break_glass_reviews = Counter(
            "imaging_proxy_break_glass_reviews",
            "Break-glass updates marked reviewed.",
            registry=registry,
        )
        self.running_operations = Gauge(
            "imaging_proxy_running_operations",
            "Operation tasks running in this process.",
            registry=registry,
        )
        self.resubmits_after_takeover = Counter(
            "imaging_proxy_resubmits_after_takeover",
            "Submits sent again by a new owner that found the image set unchanged.",
            registry=registry,
        )
        self.decided_by_comparison = Counter(
            "imaging_proxy_outcomes_decided_by_comparison",
            "ConflictExceptions or changed image sets judged by comparing the resulting metadata "
            "with the update (ours: the update was applied; theirs: someone else's change).",
            ["verdict"],
            registry=registry,
        )
        self.journal_lost = Counter(
            "imaging_proxy_journal_lost",
            "Times the shared journal was found emptied (its generation marker gone or changed); "
            "the operations held in memory were written back.",
            registry=registry,
        )
        self.operations_let_go = Counter(
            "imaging_proxy_operations_let_go",
            "Operations this replica stopped running (lease lapsed or fenced); their streams were "
            "told to re-attach.",
            registry=registry,
        )

    @contextmanager
    def serving(self, host: str, port: int) -> Iterator[int]:
        """Serve /metrics over HTTP on its own thread until the block ends; yields the port."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # EADDRINUSE above all (http.server sets SO_REUSEADDR only)
            raise StartupError(
                f"server.metrics_port: cannot listen on {host}:{port} ({exc.strerror or exc})"
            ) from None
        try:
            yield int(server.server_port)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _version() -> str:
    try:
        return metadata.version("imaging-proxy")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
