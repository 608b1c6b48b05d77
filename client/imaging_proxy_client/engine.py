"""The client's engine: channels, following an update's stream, retries, the time bound.

Submits are retry-safe through the request's idempotency key: on UNAVAILABLE or a lost
connection the same request is re-sent until the proxy has acknowledged it (any event carries
the operation id); after that the engine re-attaches with WatchUpdate instead. It prints nothing:
it yields the stream's events and a `Retrying` before each pause.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

from imaging_proxy_client.errors import (
    DEFINITE_HANDSHAKE_FAILURES,
    ClientError,
    TransportError,
    details,
    from_rpc_error,
    handshake_failure,
    rich_status,
)
from imaging_proxy_client.events import Retrying
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2, metadata_pb2_grpc
from imaging_proxy_client.tracing import with_trace_context

LOG = logging.getLogger("imaging_proxy.client")
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 5.0
_RETRY_AFTER_CAP_S = 30.0
# The same request gets the same answer: never sent again, whatever the attempt budget.
_FINAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED})


@dataclass(frozen=True)
class Settings:
    """Where the proxy is, how to reach it, and how long to keep trying."""

    target: str
    """host:port for gRPC."""
    credentials: grpc.ChannelCredentials | None
    """TLS credentials; None for a plaintext channel."""
    channel_options: tuple[tuple[str, str | int], ...]
    """gRPC channel arguments (e.g. a TLS target name override)."""
    metadata: tuple[tuple[str, str], ...]
    """Identity headers sent with every call (x-dev-principal, authorization)."""
    connect_timeout: float | None
    """Bound on establishing the connection; None for no bound."""
    read_timeout: float | None
    """The longest silence tolerated on a status stream; None for no bound."""
    max_attempts: int
    """Attempts per call when the proxy is unreachable or the stream is lost."""
    retry_timeout: float | None
    """The longest time spent retrying without progress before giving up; None for no bound."""


@dataclass
class Tracker:
    """What is known about the operation so far (read by a Ctrl-C handler, or to re-attach)."""

    idempotency_key: str
    operation_id: str = ""
    acknowledged: bool = False
    events: int = 0
    """Events that show the update moving (a replayed `authorized` or a heartbeat does not)."""


class _Retryable(Exception):
    """A failure worth another attempt: the proxy unreachable, silent or gone mid-stream."""

    def __init__(self, error: ClientError, silence: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        # A read timeout counts against the attempts even when events came before it.
        self.silence = silence


@dataclass(frozen=True)
class RetryPlan:
    """How to try again after a failed status: after how long, and whether to re-submit."""

    delay: float
    resubmit: bool
    """The proxy ended the operation itself (it answered), so a re-attach would replay that."""


_ELSEWHERE = frozenset({"OPERATION_MOVED", "REDIS_UNAVAILABLE"})
"""Reasons meaning "the operation continues; this stream of it ended"."""


def retry_plan(err: grpc.aio.AioRpcError, acknowledged: bool, failures: int) -> RetryPlan | None:
    """None when the status is final; else when and how to retry.

    UNAVAILABLE without details is a lost connection: re-attach (or re-submit when no event
    came). Before HealthImaging acknowledged the submit, UNAVAILABLE with details (OPA or
    HealthImaging unreachable) and RESOURCE_EXHAUSTED with RetryInfo (throttled) ended the
    operation in the proxy without submitting it, so the request is sent again. INVALID_ARGUMENT
    and PERMISSION_DENIED are final. OPERATION_MOVED and REDIS_UNAVAILABLE (a replica let go of
    the operation, or could not reach the journal) re-attach even after the acknowledgement.
    """
    code = err.code()
    if code in _FINAL:
        return None
    status = rich_status(err)
    if code is grpc.StatusCode.UNAVAILABLE and status is None:
        if handshake_failure(err.details() or "") in DEFINITE_HANDSHAKE_FAILURES:
            return None  # a certificate or a scheme that is wrong stays wrong
        return RetryPlan(backoff_seconds(failures), resubmit=False)
    info, _, retry = details(status)
    if code is grpc.StatusCode.UNAVAILABLE and info is not None and info.reason in _ELSEWHERE:
        # The operation goes on (another replica, or after Redis returns): follow it there.
        return RetryPlan(backoff_seconds(failures), resubmit=not acknowledged)
    # RESOURCE_EXHAUSTED without RetryInfo is not the proxy's throttle but e.g. gRPC's own
    # "trailer too large": the same request would get the same answer.
    throttled = code is grpc.StatusCode.RESOURCE_EXHAUSTED and retry is not None
    if acknowledged or not (throttled or code is grpc.StatusCode.UNAVAILABLE):
        return None
    delay = backoff_seconds(failures)
    if retry is not None:
        delay = min(_RETRY_AFTER_CAP_S, retry.retry_delay.ToTimedelta().total_seconds())
    return RetryPlan(delay, resubmit=True)


def backoff_seconds(attempt: int) -> float:
    """Full-jitter exponential backoff, as botocore's standard retry mode."""
    return random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))


_PROBE = "/grpc.health.v1.Health/Check"
"""Served on the proxy's port; called only to learn why a connection failed."""
_PROBE_TIMEOUT_S = 2.0


@asynccontextmanager
async def open_channel(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """A channel that is READY (or a retryable failure), closed on exit."""
    options = list(settings.channel_options)
    if settings.credentials is None:
        channel = grpc.aio.insecure_channel(settings.target, options=options)
    else:
        channel = grpc.aio.secure_channel(settings.target, settings.credentials, options=options)
    try:
        await _connect(channel, settings)
        yield channel
    finally:
        await channel.close(grace=None)


async def _connect(channel: grpc.aio.Channel, settings: Settings) -> None:
    try:
        await asyncio.wait_for(_until_ready(channel, settings), settings.connect_timeout)
    except TimeoutError:
        raise _Retryable(TransportError("connect-timeout", settings.target)) from None


async def _until_ready(channel: grpc.aio.Channel, settings: Settings) -> None:
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            failure = await _connect_failure(channel, settings.target)
            if failure.handshake in DEFINITE_HANDSHAKE_FAILURES:
                raise failure  # a certificate or a scheme that is wrong stays wrong
            raise _Retryable(failure)
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


async def _connect_failure(channel: grpc.aio.Channel, target: str) -> TransportError:
    """Why connecting failed: TRANSIENT_FAILURE does not say, but a call that does not wait for
    the connection fails with gRPC's words (a refused handshake, an unknown CA...)."""
    probe: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(_PROBE)
    try:
        await probe(b"", timeout=_PROBE_TIMEOUT_S, wait_for_ready=False)
    except grpc.aio.AioRpcError as err:
        return TransportError("unreachable", target, err.code(), err.details() or "")
    return TransportError("unreachable", target)


class _RetryClock:
    """Bounds the time spent retrying without progress (a submit that keeps failing)."""

    def __init__(self, limit: float | None) -> None:
        self._limit = limit
        self._since = time.monotonic()

    def check(self, progressed: bool, delay: float, error: ClientError) -> None:
        """Raise the last error, saying so, when the next attempt would start past the bound."""
        now = time.monotonic()
        if progressed:
            self._since = now
        if self._limit is not None and now + delay - self._since > self._limit:
            error.gave_up_after = now - self._since
            raise error from None


async def stream_update(
    settings: Settings,
    request: metadata_pb2.UpdateImageSetMetadataRequest | None,
    tracker: Tracker,
    until_submitted: bool = False,
) -> AsyncGenerator[metadata_pb2.UpdateEvent | Retrying, None]:
    """Submit (or, without a request, re-attach to) an update; yield its events up to the end.

    The last event is `finished`, or `submitted` when `until_submitted`. Raises a ClientError.
    """
    failures = 0
    clock = _RetryClock(settings.retry_timeout)
    while True:
        events_before, silence = tracker.events, False
        try:
            attempt = _one_attempt(settings, request, tracker, until_submitted)
            async with aclosing(attempt):
                async for event in attempt:
                    yield event
            return
        except grpc.aio.AioRpcError as err:
            plan = retry_plan(err, tracker.acknowledged or request is None, failures)
            error = from_rpc_error(err, settings.target)
            if plan is None or failures + 1 >= settings.max_attempts:
                raise error from None
            if plan.resubmit:
                tracker.operation_id = ""
            delay = plan.delay
        except _Retryable as retry:
            if failures + 1 >= settings.max_attempts:
                raise retry.error from None
            error, delay, silence = retry.error, backoff_seconds(failures), retry.silence
        # A stream that made progress before it broke starts a fresh budget of attempts and time.
        progressed = tracker.events != events_before and not silence
        failures = 0 if progressed else failures + 1
        clock.check(progressed, delay, error)
        LOG.debug("retrying in %.2fs: %s", delay, error)
        yield Retrying(tracker.operation_id, error, delay)
        await asyncio.sleep(delay)


async def _one_attempt(
    settings: Settings,
    request: metadata_pb2.UpdateImageSetMetadataRequest | None,
    tracker: Tracker,
    until_submitted: bool,
) -> AsyncGenerator[metadata_pb2.UpdateEvent, None]:
    async with open_channel(settings) as channel:
        stub = metadata_pb2_grpc.MetadataUpdateServiceStub(channel)
        metadata = with_trace_context(settings.metadata)
        call: grpc.aio.UnaryStreamCall[Any, metadata_pb2.UpdateEvent]
        if tracker.operation_id or request is None:
            watch = metadata_pb2.WatchUpdateRequest(operation_id=tracker.operation_id)
            call = stub.WatchUpdate(watch, metadata=metadata)
        else:
            call = stub.UpdateImageSetMetadata(request, metadata=metadata)
        try:
            while True:
                event = await _read(call, settings)
                done = _record(event, tracker, until_submitted)
                yield event
                if done:
                    return
        finally:
            call.cancel()


async def _read(
    call: grpc.aio.UnaryStreamCall[Any, metadata_pb2.UpdateEvent], settings: Settings
) -> metadata_pb2.UpdateEvent:
    try:
        event = await asyncio.wait_for(call.read(), settings.read_timeout)
    except TimeoutError:
        raise _Retryable(TransportError("read-timeout", settings.target), silence=True) from None
    if not isinstance(event, metadata_pb2.UpdateEvent):  # grpc.aio.EOF
        raise _Retryable(TransportError("closed", settings.target))
    return event


def _record(event: metadata_pb2.UpdateEvent, tracker: Tracker, until_submitted: bool) -> bool:
    """Note the event in the tracker; True when it ends the stream for this caller."""
    kind = event.WhichOneof("event")
    LOG.debug("event %s for operation %s", kind, event.operation_id)
    if kind in ("submitted", "status", "finished"):
        tracker.events += 1
    if event.operation_id:
        tracker.operation_id = event.operation_id
    if kind == "submitted":
        tracker.acknowledged = True
    return kind in TERMINAL or (kind == "submitted" and until_submitted)


TERMINAL = frozenset({"finished", "cancelled", "rejected", "expired"})
"""The events that end an update's stream."""


async def evaluate(
    settings: Settings, request: metadata_pb2.UpdateImageSetMetadataRequest
) -> metadata_pb2.Evaluation:
    """The dry run; retried like a submit while the proxy is unreachable."""
    result: metadata_pb2.Evaluation = await unary(settings, "EvaluateUpdate", request)
    return result


async def unary(settings: Settings, method: str, request: Message) -> Any:
    """One unary call of the service by its method name, retried while the proxy is
    unreachable (each is safe to repeat: cancelling a cancelled operation answers it again)."""
    failures = 0
    clock = _RetryClock(settings.retry_timeout)
    while True:
        try:
            async with open_channel(settings) as channel:
                stub = metadata_pb2_grpc.MetadataUpdateServiceStub(channel)
                return await getattr(stub, method)(
                    request,
                    metadata=with_trace_context(settings.metadata),
                    timeout=settings.read_timeout,
                )
        except grpc.aio.AioRpcError as err:
            plan = retry_plan(err, False, failures)
            error = from_rpc_error(err, settings.target)
            if plan is None or failures + 1 >= settings.max_attempts:
                raise error from None
            delay = plan.delay
        except _Retryable as retry:
            if failures + 1 >= settings.max_attempts:
                raise retry.error from None
            error, delay = retry.error, backoff_seconds(failures)
        failures += 1
        clock.check(False, delay, error)
        await asyncio.sleep(delay)
