"""Retry-safety of the client against a scripted proxy on a real socket (failures on demand).

The real stack cannot drop a stream at a chosen moment, so a small servicer plays the proxy's
contract here: it records what the client sent and fails where each test says.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Any, SupportsIndex

import grpc
import grpc.aio
import pytest
from grpc_status import rpc_status
from imaging_proxy_client.cli.connection import Connection, Tracker, follow_update
from imaging_proxy_client.cli.errors import EndpointError, ServiceError
from imaging_proxy_client.cli.printing.progress import Progress
from imaging_proxy_client.engine import Settings
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from service.core.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    ProxyError,
    ResourceExhausted,
    Unavailable,
)
from service.transport.grpc_errors import to_status

Script = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[pb.UpdateEvent]]


def event(kind: str, status: str = "UPDATING", state: str = "LOCKED") -> pb.UpdateEvent:
    message = pb.UpdateEvent(operation_id="op-1")
    if kind == "authorized":
        message.authorized.decision_id = "dec-1"
    else:
        image_set = pb.ImageSetState(
            latest_version_id="2", image_set_state=state, image_set_workflow_status=status
        )
        getattr(message, kind).state.CopyFrom(image_set)
    return message


class ScriptedProxy(pb_grpc.MetadataUpdateServiceServicer):
    def __init__(self, updates: list[Script], watches: list[Script]) -> None:
        self.updates, self.watches = updates, watches
        self.update_requests: list[pb.UpdateImageSetMetadataRequest] = []
        self.watch_requests: list[pb.WatchUpdateRequest] = []

    async def UpdateImageSetMetadata(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.UpdateEvent]:
        self.update_requests.append(request)
        async for item in self.updates.pop(0)(request, context):
            yield item

    async def EvaluateUpdate(self, request: Any, context: Any) -> pb.Evaluation:
        raise NotImplementedError

    async def WatchUpdate(self, request: Any, context: Any) -> AsyncIterator[pb.UpdateEvent]:
        self.watch_requests.append(request)
        async for item in self.watches.pop(0)(request, context):
            yield item


async def unavailable(_request: Any, context: Any) -> AsyncIterator[pb.UpdateEvent]:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
    yield pb.UpdateEvent()  # pragma: no cover - abort raises


async def acknowledged_then_gone(_request: Any, _context: Any) -> AsyncIterator[pb.UpdateEvent]:
    yield event("authorized")
    yield event("submitted")


async def finishes(_request: Any, _context: Any) -> AsyncIterator[pb.UpdateEvent]:
    yield event("status")
    yield event("finished", "UPDATED", "ACTIVE")


async def silent(_request: Any, _context: Any) -> AsyncIterator[pb.UpdateEvent]:
    yield event("authorized")
    await asyncio.Event().wait()  # until the client gives up and cancels


async def serve(proxy: ScriptedProxy) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_MetadataUpdateServiceServicer_to_server(proxy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def connection(
    port: int,
    read_timeout: float | None = 10.0,
    attempts: int = 5,
    retry_timeout: float | None = None,
) -> Connection:
    settings = Settings(
        target=f"127.0.0.1:{port}",
        credentials=None,
        channel_options=(),
        metadata=(("x-dev-principal", "demo-admin"),),
        connect_timeout=10.0,
        read_timeout=read_timeout,
        max_attempts=attempts,
        retry_timeout=retry_timeout,
    )
    return Connection(endpoint_url=f"http://127.0.0.1:{port}", settings=settings)


REQUEST = pb.UpdateImageSetMetadataRequest(
    datastore_id="d" * 32, image_set_id="i" * 32, latest_version_id="1", idempotency_key="key-1"
)


async def test_resubmits_with_the_same_key_then_re_attaches_after_the_acknowledgement() -> None:
    proxy = ScriptedProxy([unavailable, acknowledged_then_gone], [finishes])
    server, port = await serve(proxy)
    tracker = Tracker(idempotency_key="key-1")
    progress_text = io.StringIO()
    try:
        state = await follow_update(
            connection(port), REQUEST, tracker, Progress(progress_text, live=False), False
        )
    finally:
        await server.stop(None)

    assert state.image_set_workflow_status == "UPDATED"
    assert [r.idempotency_key for r in proxy.update_requests] == ["key-1", "key-1"]
    assert [r.operation_id for r in proxy.watch_requests] == ["op-1"]
    assert "re-attaching to operation op-1" in progress_text.getvalue()


async def test_a_silent_stream_is_a_read_timeout_after_the_attempts() -> None:
    proxy = ScriptedProxy([silent], [silent])
    server, port = await serve(proxy)
    tracker = Tracker(idempotency_key="key-1")
    try:
        with pytest.raises(EndpointError) as raised:
            await follow_update(
                connection(port, read_timeout=0.3, attempts=2),
                REQUEST,
                tracker,
                Progress(io.StringIO(), live=False),
                False,
            )
    finally:
        await server.stop(None)

    assert str(raised.value) == f'Read timeout on endpoint URL: "http://127.0.0.1:{port}"'
    assert raised.value.exit_code == 255
    assert [r.operation_id for r in proxy.watch_requests] == ["op-1"]


async def test_no_wait_returns_the_submit_response() -> None:
    proxy = ScriptedProxy([acknowledged_then_gone], [])
    server, port = await serve(proxy)
    try:
        state = await follow_update(
            connection(port), REQUEST, Tracker("key-1"), Progress(io.StringIO(), live=False), True
        )
    finally:
        await server.stop(None)
    assert (state.image_set_state, state.image_set_workflow_status) == ("LOCKED", "UPDATING")
    assert proxy.watch_requests == []


def refused_with(error: ProxyError) -> Script:
    async def script(_request: Any, context: Any) -> AsyncIterator[pb.UpdateEvent]:
        await context.abort_with_status(rpc_status.to_status(to_status(error)))
        yield pb.UpdateEvent()  # pragma: no cover - abort raises

    return script


async def trailers_too_large(_request: Any, context: Any) -> AsyncIterator[pb.UpdateEvent]:
    # What an unbounded InvalidArgument became: gRPC drops the status for RESOURCE_EXHAUSTED.
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Stream removed")
    yield pb.UpdateEvent()  # pragma: no cover - abort raises


LONG_UID = "1." + "2" * 62
MANY_VIOLATIONS = InvalidArgument(
    [FieldViolation(f'Study.Series["{LONG_UID}"].DICOM.Foo{i}', "unknown key") for i in range(60)]
)


async def refused_update(proxy: ScriptedProxy) -> ServiceError:
    """The CLI's error after following one update through `proxy` (which must refuse it)."""
    server, port = await serve(proxy)
    try:
        with pytest.raises(ServiceError) as raised:
            await follow_update(
                connection(port),
                REQUEST,
                Tracker("key-1"),
                Progress(io.StringIO(), live=False),
                False,
            )
    finally:
        await server.stop(None)
    return raised.value


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (refused_with(MANY_VIOLATIONS), "InvalidArgument"),
        (
            refused_with(PermissionDenied("denied by policy", "dec-1", ["no grant"])),
            "PolicyDeniedException",
        ),
        (trailers_too_large, "ResourceExhausted"),
    ],
)
async def test_refusals_are_never_submitted_again(script: Script, code: str) -> None:
    # More scripts than one: a second attempt would run (and pass) instead of failing here.
    proxy = ScriptedProxy([script, finishes, finishes], [finishes])
    raised = await refused_update(proxy)
    assert len(proxy.update_requests) == 1
    assert proxy.watch_requests == []
    assert f"({code})" in str(raised)


async def test_a_bounded_invalid_argument_arrives_with_its_violations() -> None:
    proxy = ScriptedProxy([refused_with(MANY_VIOLATIONS)], [])
    raised = await refused_update(proxy)
    text = str(raised)
    assert "Foo0" in text and "more not shown" in text


async def test_a_throttle_with_retry_info_is_submitted_again() -> None:
    throttled = refused_with(ResourceExhausted("over capacity", retry_after_seconds=0.01))
    proxy = ScriptedProxy([throttled, acknowledged_then_gone], [finishes])
    server, port = await serve(proxy)
    try:
        state = await follow_update(
            connection(port), REQUEST, Tracker("key-1"), Progress(io.StringIO(), live=False), False
        )
    finally:
        await server.stop(None)
    assert state.image_set_workflow_status == "UPDATED"
    assert len(proxy.update_requests) == 2


class EndlessScripts(list[Script]):
    """The same script for every attempt, however many come."""

    def pop(self, _index: SupportsIndex = -1) -> Script:
        return self[0]


async def replayed_failure(_request: Any, context: Any) -> AsyncIterator[pb.UpdateEvent]:
    # What a proxy replaying a recorded UNAVAILABLE for the same idempotency key sends.
    yield event("authorized")
    await context.abort_with_status(rpc_status.to_status(to_status(Unavailable("down"))))


async def test_a_submit_that_keeps_failing_gives_up_after_the_retry_timeout() -> None:
    proxy = ScriptedProxy(EndlessScripts([replayed_failure]), [])
    server, port = await serve(proxy)
    try:
        with pytest.raises(ServiceError) as raised:
            await asyncio.wait_for(  # a client retrying forever fails here instead of hanging
                follow_update(
                    connection(port, attempts=1_000_000, retry_timeout=1.0),
                    REQUEST,
                    Tracker("key-1"),
                    Progress(io.StringIO(), live=False),
                    False,
                ),
                timeout=60,
            )
    finally:
        await server.stop(None)
    assert raised.value.exit_code == 254
    assert str(raised.value).startswith(
        "An error occurred (Unavailable) when calling the UpdateImageSetMetadata operation: down"
    )
    assert "gave up after retrying for" in str(raised.value)
    assert len(proxy.update_requests) >= 2  # it did retry before giving up
