"""Traces across a real update: the proxy in-process (so the SDK's in-memory exporter is readable),
real OPA and emulator, a real gRPC socket; the caller's W3C context is continued, the stages
chain under the RPC's span, the instrumentations add OPA and HealthImaging spans, nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.stack import LocalStack, StackSpec, running_stack
from service import app
from service.core.config import Settings
from service.core.config_loader import load_settings
from service.observability import audit
from tests.e2e.conftest import EMULATOR_ENV, collect, dev, kinds, study_update

pytestmark = pytest.mark.e2e

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
MARKER = "TRACEMARKER-Q7Z"
STAGES = ("policy.decide", "admission.queue", "healthimaging.submit", "watch.follow")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    spec = StackSpec(2, aws_examples=False)
    with running_stack(spec, tmp_path_factory.mktemp("tracing")) as local:
        yield local


@contextlib.asynccontextmanager
async def traced_proxy(settings: Settings, provider: TracerProvider) -> AsyncIterator[int]:
    """`service.app.run` in this process, tracing into `provider`; yields its port."""
    stop, port = asyncio.Event(), asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(app.run(settings, port.set_result, stop, provider))
    try:
        yield await asyncio.wait_for(asyncio.shield(port), 30)
    finally:
        stop.set()
        await serving


def proxy_settings(backend: LocalStack) -> Settings:
    return load_settings(
        overrides={
            "server": {"port": 0, "grace_seconds": 0.5},
            "identity": {"insecure_dev_identity": True},
            "opa": {"url": backend.opa_url},
            "backend": {"endpoint_url": backend.emulator_url},
            "tracing": {"enabled": True},
        }
    )


def text_of(span: ReadableSpan) -> str:
    """Everything a span says: name, attributes, events and their attributes, status."""
    parts: list[Any] = [span.name, dict(span.attributes or {}), span.status.description]
    parts += [(event.name, dict(event.attributes or {})) for event in span.events]
    return repr(parts)


async def test_an_update_is_one_trace_from_the_caller_to_healthimaging(
    backend: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in EMULATOR_ENV.items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "imaging-proxy"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    image_set = backend.take(1)[0]
    request = study_update(backend.datastore_id, image_set, MARKER)
    metadata = (*dev("demo-editor"), ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
    with audit.capture() as audited:
        async with (
            traced_proxy(proxy_settings(backend), provider) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = pb_grpc.MetadataUpdateServiceStub(channel)
            events = await collect(stub.UpdateImageSetMetadata(request, metadata=metadata))
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "readiness"):  # what orchestrators ask every few seconds
                await health.Check(health_pb2.HealthCheckRequest(service=name))
    assert kinds(events)[-1] == "finished"
    spans = exporter.get_finished_spans()
    in_trace = [
        s for s in spans if s.context is not None and s.context.trace_id == int(CALLER_TRACE, 16)
    ]
    by_name = {s.name: s for s in in_trace}

    rpc = next(s for s in in_trace if s.name.endswith("/UpdateImageSetMetadata"))
    assert rpc.parent is not None and rpc.parent.span_id == int(CALLER_SPAN, 16)
    operation_id = events[0].operation_id
    assert (rpc.attributes or {}).get("imaging.operation_id") == operation_id
    for name in STAGES:
        stage = by_name[name]
        assert stage.parent is not None and rpc.context is not None
        assert stage.parent.span_id == rpc.context.span_id, name
        assert (stage.attributes or {})["imaging.image_set_id"] == image_set
    for name in STAGES[1:]:
        assert (by_name[name].attributes or {})["imaging.operation_id"] == operation_id

    def children(parent: ReadableSpan, kind: str) -> list[ReadableSpan]:
        assert parent.context is not None
        return [
            s
            for s in in_trace
            if s.parent is not None
            and s.parent.span_id == parent.context.span_id
            and kind in s.name
        ]

    assert children(by_name["policy.decide"], "POST"), "no aiohttp span under the decision"
    assert children(by_name["healthimaging.submit"], "UpdateImageSetMetadata")
    assert not [s.name for s in spans if MARKER in text_of(s)]
    assert [r["trace_id"] for r in audited] == [CALLER_TRACE] * 3  # decision, submit, finish
    assert not [s.name for s in spans if "Health" in s.name]  # probes are not traced
    assert [s.name for s in spans if s.name.startswith("Medical Imaging.")]  # as the docs say


async def test_tracing_is_off_by_default() -> None:
    assert not load_settings().tracing.enabled
