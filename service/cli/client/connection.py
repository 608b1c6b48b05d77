"""The client's connection engine: channels, following an update's stream, retries, errors.

It prints nothing: an `Observer` (the CLI's progress line) is told what happens. Submits are
retry-safe through the request's idempotency key: on UNAVAILABLE or a lost connection the same
request is re-sent until the proxy has acknowledged it (any event carries the operation id);
after that the CLI re-attaches with WatchUpdate instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service._proto.imaging.metadata.v1 import metadata_pb2, metadata_pb2_grpc
from service.cli.client.errors import CliError, EndpointError, ServiceError

LOG = logging.getLogger("imaging_proxy.cli")
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 5.0


class Observer(Protocol):
    """Told what happens while an update is followed; the CLI's progress line is one."""

    def event(self, event: metadata_pb2.UpdateEvent) -> None:
        """An event read from the stream."""

    def note(self, text: str) -> None:
        """A retry about to happen, in words."""


@dataclass(frozen=True)
class Connection:
    """Where the proxy is and how to reach it."""

    endpoint_url: str
    """The address as the user gave it (for messages)."""
    target: str
    """host:port for gRPC."""
    credentials: grpc.ChannelCredentials | None
    """TLS credentials; None for a plaintext channel."""
    channel_options: tuple[tuple[str, str | int], ...]
    """gRPC channel arguments (e.g. the TLS target name override of --no-verify-ssl)."""
    metadata: tuple[tuple[str, str], ...]
    """Identity headers sent with every call (x-dev-principal, authorization)."""
    connect_timeout: float | None
    """Bound on establishing the connection; None for no bound."""
    read_timeout: float | None
    """The longest silence tolerated on a status stream; None for no bound."""
    max_attempts: int
    """Attempts per call when the proxy is unreachable or the stream is lost."""
    retry_timeout: float | None = None
    """The longest time spent retrying without progress before giving up; None for no bound."""


@dataclass
class Tracker:
    """What is known about the operation so far; read by the Ctrl-C handler."""

    idempotency_key: str
    operation_id: str = ""
    acknowledged: bool = False
    events: int = 0
    """Events that show the update moving (a replayed `authorized` or a heartbeat does not)."""


class _Retryable(Exception):
    """A failure worth another attempt: the proxy unreachable, silent or gone mid-stream."""

    def __init__(self, error: CliError, silence: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        # A read timeout counts against the attempts even when events came before it.
        self.silence = silence


@asynccontextmanager
async def open_channel(conn: Connection) -> AsyncIterator[grpc.aio.Channel]:
    if conn.credentials is None:
        channel = grpc.aio.insecure_channel(conn.target, options=list(conn.channel_options))
    else:
        channel = grpc.aio.secure_channel(
            conn.target, conn.credentials, options=list(conn.channel_options)
        )
    try:
        await _connect(channel, conn)
        yield channel
    finally:
        await channel.close(grace=None)


async def _connect(channel: grpc.aio.Channel, conn: Connection) -> None:
    try:
        await asyncio.wait_for(_until_ready(channel, conn), conn.connect_timeout)
    except TimeoutError:
        raise _Retryable(
            EndpointError(f'Connect timeout on endpoint URL: "{conn.endpoint_url}"')
        ) from None


async def _until_ready(channel: grpc.aio.Channel, conn: Connection) -> None:
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise _Retryable(
                EndpointError(f'Could not connect to the endpoint URL: "{conn.endpoint_url}"')
            )
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


# --- errors ---------------------------------------------------------------------------------


def translate(err: grpc.aio.AioRpcError, operation: str, endpoint_url: str) -> CliError:
    """A gRPC status -> the AWS CLI's error line; transport failures are not service errors."""
    status = _rich_status(err)
    code = err.code()
    if status is None and code is grpc.StatusCode.UNAVAILABLE:
        return EndpointError(f'Could not connect to the endpoint URL: "{endpoint_url}"')
    if status is None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return EndpointError(f'Read timeout on endpoint URL: "{endpoint_url}"')
    info, bad_request, retry = _details(status)
    name = error_name(code, info)
    told = (err.details() or code.name).removeprefix(f"HealthImaging {name}: ")
    message = told + _extras(info, bad_request, retry, err.details() or "")
    return ServiceError(name, operation, message)


POLICY_DENIED_NAME = "PolicyDeniedException"


def error_name(code: grpc.StatusCode, info: error_details_pb2.ErrorInfo | None) -> str:
    """The name in "An error occurred (<name>)": HealthImaging's own error code when the proxy
    passes one on, PolicyDeniedException for a policy denial, else the status in the AWS style."""
    if info is not None and info.metadata.get("aws_error_code"):
        return str(info.metadata["aws_error_code"])
    if info is not None and info.reason == "POLICY_DENIED":
        return POLICY_DENIED_NAME
    return _pascal(code.name)


def _rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(err)
    except ValueError:
        return None
    return status


def _details(
    status: status_pb2.Status | None,
) -> tuple[
    error_details_pb2.ErrorInfo | None,
    error_details_pb2.BadRequest | None,
    error_details_pb2.RetryInfo | None,
]:
    info = bad_request = retry = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return info, bad_request, retry


def _extras(
    info: error_details_pb2.ErrorInfo | None,
    bad_request: error_details_pb2.BadRequest | None,
    retry: error_details_pb2.RetryInfo | None,
    message: str,
) -> str:
    parts: list[str] = []
    if info is not None:
        parts.append(f"reason: {info.reason}")
        if info.metadata.get("decision_id"):
            parts.append(f"decision id: {info.metadata['decision_id']}")
        reasons = [
            v
            for k, v in sorted(info.metadata.items(), key=_reason_order)
            if k.startswith("reason_")
        ]
        if reasons and not all(r in message for r in reasons):
            parts.append("policy reasons: " + "; ".join(reasons))
    if retry is not None:
        parts.append(f"retry after {retry.retry_delay.ToTimedelta().total_seconds():g}s")
    extra = f" ({', '.join(parts)})" if parts else ""
    if bad_request is not None:
        missing = [
            v for v in bad_request.field_violations if f"{v.field}: {v.description}" not in message
        ]
        extra += "".join(f"\n  {v.field}: {v.description}" for v in missing)
    return extra


def _reason_order(item: tuple[str, str]) -> tuple[int, str]:
    key = item[0]
    suffix = key.removeprefix("reason_")
    return (int(suffix) if suffix.isdigit() else 1 << 30, key)


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


_RETRY_AFTER_CAP_S = 30.0
# The same request gets the same answer: never sent again, whatever the attempt budget.
_FINAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED})


@dataclass(frozen=True)
class _RetryPlan:
    """How to try again after a failed status: after how long, and whether to re-submit."""

    delay: float
    resubmit: bool
    """The proxy ended the operation itself (it answered), so a re-attach would replay that."""


def retry_plan(err: grpc.aio.AioRpcError, acknowledged: bool, failures: int) -> _RetryPlan | None:
    """None when the status is final; else when and how to retry.

    UNAVAILABLE without details is a lost connection: re-attach (or re-submit when no event
    came). Before HealthImaging acknowledged the submit, UNAVAILABLE with details (OPA or
    HealthImaging unreachable) and RESOURCE_EXHAUSTED with RetryInfo (throttled) ended the
    operation in the proxy without submitting it, so the request is sent again. INVALID_ARGUMENT
    and PERMISSION_DENIED are final.
    """
    code = err.code()
    if code in _FINAL:
        return None
    status = _rich_status(err)
    if code is grpc.StatusCode.UNAVAILABLE and status is None:
        return _RetryPlan(backoff_seconds(failures), resubmit=False)
    _, _, retry = _details(status)
    # RESOURCE_EXHAUSTED without RetryInfo is not the proxy's throttle but e.g. gRPC's own
    # "trailer too large": the same request would get the same answer.
    throttled = code is grpc.StatusCode.RESOURCE_EXHAUSTED and retry is not None
    if acknowledged or not (throttled or code is grpc.StatusCode.UNAVAILABLE):
        return None
    delay = backoff_seconds(failures)
    if retry is not None:
        delay = min(_RETRY_AFTER_CAP_S, retry.retry_delay.ToTimedelta().total_seconds())
    return _RetryPlan(delay, resubmit=True)


def backoff_seconds(attempt: int) -> float:
    """Full-jitter exponential backoff, as botocore's standard retry mode."""
    return random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))


# --- following an update --------------------------------------------------------------------


async def follow_update(
    conn: Connection,
    request: metadata_pb2.UpdateImageSetMetadataRequest | None,
    tracker: Tracker,
    observer: Observer,
    until_submitted: bool,
) -> metadata_pb2.ImageSetState:
    """Submit (or re-attach to) an update; return the finished state, or the submitted one."""
    operation = "UpdateImageSetMetadata" if request is not None else "WatchUpdate"
    failures = 0
    clock = _RetryClock(conn.retry_timeout)
    while True:
        events_before, silence = tracker.events, False
        try:
            return await _one_attempt(conn, request, tracker, observer, until_submitted)
        except grpc.aio.AioRpcError as err:
            plan = retry_plan(err, tracker.acknowledged or request is None, failures)
            error = translate(err, operation, conn.endpoint_url)
            if plan is None or failures + 1 >= conn.max_attempts:
                raise error from None
            if plan.resubmit:
                tracker.operation_id = ""
            reason, delay = f"{err.code().name}: {err.details() or 'connection lost'}", plan.delay
        except _Retryable as retry:
            if failures + 1 >= conn.max_attempts:
                raise retry.error from None
            error, delay, silence = retry.error, backoff_seconds(failures), retry.silence
            reason = str(error)
        # A stream that made progress before it broke starts a fresh budget of attempts and time.
        progressed = tracker.events != events_before and not silence
        failures = 0 if progressed else failures + 1
        clock.check(progressed, delay, error)
        await _pause_before_retry(delay, reason, tracker, observer)


class _RetryClock:
    """Bounds the time spent retrying without progress (a submit that keeps failing)."""

    def __init__(self, limit: float | None) -> None:
        self._limit = limit
        self._since = time.monotonic()

    def check(self, progressed: bool, delay: float, error: CliError) -> None:
        """Raise the last error, saying so, when the next attempt would start past the bound."""
        now = time.monotonic()
        if progressed:
            self._since = now
        if self._limit is not None and now + delay - self._since > self._limit:
            raise _gave_up(error, now - self._since) from None


def _gave_up(error: CliError, waited: float) -> CliError:
    note = f" (gave up after retrying for {waited:.0f}s; see --cli-retry-timeout)"
    if isinstance(error, ServiceError):
        return ServiceError(error.code, error.operation, error.message + note)
    return EndpointError(str(error) + note)


async def _pause_before_retry(
    delay: float, reason: str, tracker: Tracker, observer: Observer
) -> None:
    how = (
        f"re-attaching to operation {tracker.operation_id}"
        if tracker.operation_id
        else "re-submitting with the same idempotency key"
    )
    observer.note(f"{reason}; {how} in {delay:.1f}s")
    LOG.debug("retrying in %.2fs: %s", delay, reason)
    await asyncio.sleep(delay)


async def _one_attempt(
    conn: Connection,
    request: metadata_pb2.UpdateImageSetMetadataRequest | None,
    tracker: Tracker,
    observer: Observer,
    until_submitted: bool,
) -> metadata_pb2.ImageSetState:
    async with open_channel(conn) as channel:
        stub = metadata_pb2_grpc.MetadataUpdateServiceStub(channel)
        call: grpc.aio.UnaryStreamCall[Any, metadata_pb2.UpdateEvent]
        if tracker.operation_id or request is None:
            watch = metadata_pb2.WatchUpdateRequest(operation_id=tracker.operation_id)
            call = stub.WatchUpdate(watch, metadata=conn.metadata)
        else:
            call = stub.UpdateImageSetMetadata(request, metadata=conn.metadata)
        return await _read_until_done(call, conn, tracker, observer, until_submitted)


async def _read_until_done(
    call: grpc.aio.UnaryStreamCall[Any, metadata_pb2.UpdateEvent],
    conn: Connection,
    tracker: Tracker,
    observer: Observer,
    until_submitted: bool,
) -> metadata_pb2.ImageSetState:
    while True:
        try:
            event = await asyncio.wait_for(call.read(), conn.read_timeout)
        except TimeoutError:
            call.cancel()
            raise _Retryable(
                EndpointError(f'Read timeout on endpoint URL: "{conn.endpoint_url}"'), silence=True
            ) from None
        if not isinstance(event, metadata_pb2.UpdateEvent):  # grpc.aio.EOF
            raise _Retryable(
                EndpointError("The proxy closed the stream before the update finished")
            )
        state = _record(event, tracker, observer, until_submitted)
        if state is not None:
            call.cancel()
            return state


def _record(
    event: metadata_pb2.UpdateEvent, tracker: Tracker, observer: Observer, until_submitted: bool
) -> metadata_pb2.ImageSetState | None:
    kind = event.WhichOneof("event")
    LOG.debug("event %s for operation %s", kind, event.operation_id)
    if kind in ("submitted", "status", "finished"):
        tracker.events += 1
    if event.operation_id:
        tracker.operation_id = event.operation_id
    observer.event(event)
    if kind == "submitted":
        tracker.acknowledged = True
        if until_submitted:
            return event.submitted.state
    if kind == "finished":
        return event.finished.state
    return None


async def evaluate(
    conn: Connection, request: metadata_pb2.UpdateImageSetMetadataRequest
) -> metadata_pb2.Evaluation:
    """The dry run; retried like a submit while the proxy is unreachable."""
    failures = 0
    clock = _RetryClock(conn.retry_timeout)
    while True:
        try:
            async with open_channel(conn) as channel:
                stub = metadata_pb2_grpc.MetadataUpdateServiceStub(channel)
                timeout = conn.read_timeout
                result: metadata_pb2.Evaluation = await stub.EvaluateUpdate(
                    request, metadata=conn.metadata, timeout=timeout
                )
                return result
        except grpc.aio.AioRpcError as err:
            plan = retry_plan(err, False, failures)
            error = translate(err, "EvaluateUpdate", conn.endpoint_url)
            if plan is None or failures + 1 >= conn.max_attempts:
                raise error from None
            delay = plan.delay
        except _Retryable as retry:
            if failures + 1 >= conn.max_attempts:
                raise retry.error from None
            error, delay = retry.error, backoff_seconds(failures)
        failures += 1
        clock.check(False, delay, error)
        await asyncio.sleep(delay)
