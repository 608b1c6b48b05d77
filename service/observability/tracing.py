"""Tracing: OpenTelemetry's provider and instrumentations, and the proxy's own stage spans.

Off by default. Then `span` is a no-op and nothing of OpenTelemetry is imported (start-up and
memory stay as they were). On: the instrumentation packages trace the gRPC server (continuing
the caller's W3C context; health checks are not traced), the aiohttp client that asks OPA and
aiobotocore's HealthImaging calls; the proxy adds one span per stage of an update. Spans go to
an OTLP collector, or to stderr as JSON lines (`exporter = "console"`, for local use); either
way one export, and so the flush at shutdown, lasts at most `export_timeout_seconds`. A stage
span carries ids and counts only, never an attribute value, and records no exception message
(messages may quote the document).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

from service.core.config import TracingSettings
from service.core.model import OperationRecord, UpdatePlan

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

SERVICE_NAME = "imaging-proxy"
OPERATION_ID = "imaging.operation_id"

_tracer: Tracer | None = None
"""Set while tracing is on (between `opened` and its exit)."""

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


class _Instrumentor(Protocol):
    def instrument(self, **kwargs: object) -> None: ...

    def uninstrument(self, **kwargs: object) -> None: ...


class _HasRecord(Protocol):
    @property
    def record(self) -> OperationRecord: ...

    @property
    def plan(self) -> UpdatePlan: ...


Op = TypeVar("Op", bound=_HasRecord)


@contextlib.contextmanager
def opened(settings: TracingSettings, provider: TracerProvider | None = None) -> Iterator[None]:
    """Trace while inside: `provider` if given (its owner shuts it down), else an SDK provider
    exporting as `settings.exporter` says, flushed and shut down on exit. Instrumentations
    first, so the server and clients opened afterwards are traced."""
    global _tracer
    if not settings.enabled and provider is None:
        yield
        return
    owned = provider is None
    provider = provider or _sdk_provider(settings)
    instrumentors = _instrument(provider)
    _tracer = provider.get_tracer("service.observability.tracing")
    try:
        yield
    finally:
        _tracer = None
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        if owned:
            provider.shutdown()  # flushes the batch processor


def _sdk_provider(settings: TracingSettings) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    timeout_ms = settings.export_timeout_seconds * 1000
    processor = BatchSpanProcessor(_exporter(settings), export_timeout_millis=timeout_ms)
    provider.add_span_processor(processor)
    return provider


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        import sys

        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # one compact JSON object per span, on stderr with the logs (stdout is the audit's)
        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(None) + "\n")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # `timeout` bounds an export with its retries: a collector that is down cannot hold
    # the shutdown's flush for the exporter's default 10 s and more
    return OTLPSpanExporter(
        endpoint=settings.endpoint,
        insecure=settings.insecure,
        timeout=settings.export_timeout_seconds,
    )


def _instrument(provider: TracerProvider) -> list[_Instrumentor]:
    from opentelemetry.instrumentation.aiobotocore import AioBotocoreInstrumentor
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer, filters

    untraced_health = filters.negate(filters.health_check())  # probes every few s: noise
    instrumentors: list[_Instrumentor] = [
        GrpcAioInstrumentorServer(filter_=untraced_health),  # type: ignore[no-untyped-call]
        AioHttpClientInstrumentor(),
        AioBotocoreInstrumentor(),  # type: ignore[no-untyped-call]
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    return instrumentors


def plan_attributes(plan: UpdatePlan) -> dict[str, str | int]:
    """What a stage span may say about an update: ids and a count, no values."""
    return {
        "imaging.datastore_id": plan.datastore_id,
        "imaging.image_set_id": plan.image_set_id,
        "imaging.tags_count": len(plan.touched_tags()),
    }


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, str | int]) -> Iterator[None]:
    """A stage span, child of the current one; errors mark it by type name only."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield
        except BaseException as exc:
            from opentelemetry.trace import StatusCode

            current.set_status(StatusCode.ERROR)
            current.set_attribute("error.type", type(exc).__name__)
            raise


def stage(
    name: str,
) -> Callable[
    [Callable[Concatenate[S, Op, P], Awaitable[R]]], Callable[Concatenate[S, Op, P], Awaitable[R]]
]:
    """A runner method on an operation, traced as the stage `name` with the operation's ids."""

    def decorate(
        method: Callable[Concatenate[S, Op, P], Awaitable[R]],
    ) -> Callable[Concatenate[S, Op, P], Awaitable[R]]:
        @functools.wraps(method)
        async def traced(self: S, operation: Op, /, *args: P.args, **kwargs: P.kwargs) -> R:
            attributes = {OPERATION_ID: operation.record.id, **plan_attributes(operation.plan)}
            with span(name, attributes):
                return await method(self, operation, *args, **kwargs)

        return traced

    return decorate


def tag_operation(operation_id: str) -> None:
    """Name the operation on the current span (the RPC's, once the operation is recorded)."""
    if _tracer is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attribute(OPERATION_ID, operation_id)


def log_fields() -> dict[str, str]:
    """`trace_id` (hex) of the current span for a log line, when tracing is on."""
    if _tracer is None:
        return {}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return {"trace_id": trace.format_trace_id(context.trace_id)} if context.is_valid else {}
