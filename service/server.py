"""Transport: the gRPC server, protobuf ↔ domain values, the one place errors become statuses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from service import audit
from service._proto.imaging.metadata.v1 import metadata_pb2 as pb
from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.config import Settings
from service.errors import Internal, ProxyError
from service.healthimaging import HealthImaging, ImageSetStatus
from service.identity import Authenticator, Caller
from service.operations import (
    Authorized,
    Event,
    Finished,
    Heartbeat,
    Operations,
    Queued,
    StatusChanged,
    Submitted,
)
from service.pipeline import Pipeline
from service.policy import Decision, PolicyClient
from service.tls import server_credentials
from service.updates import UpdatePlan, UpdateRequest
from service.watch import Watcher

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MetadataUpdateService"].full_name
T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ProxyError) -> NoReturn:
    """The only place a domain error becomes a gRPC status (with its rich details)."""
    await context.abort_with_status(rpc_status.to_status(error.to_status()))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _unexpected(method: str, exc: Exception) -> Internal:
    log.exception("unhandled_error", rpc=method)
    return Internal(f"internal error ({type(exc).__name__})")


def unary(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await handler(self, request, context)
        except ProxyError as error:
            await _abort(context, error)
        except Exception as exc:  # noqa: BLE001 - becomes INTERNAL; AbortError is raised by _abort only
            await _abort(context, _unexpected(handler.__name__, exc))

    return wrapper


def streaming(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[T]]:
    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[T]:
        try:
            async for item in handler(self, request, context):
                yield item
        except ProxyError as error:
            await _abort(context, error)
        except Exception as exc:  # noqa: BLE001 - becomes INTERNAL; AbortError is raised by _abort only
            await _abort(context, _unexpected(handler.__name__, exc))

    return wrapper


class MetadataUpdateServicer(pb_grpc.MetadataUpdateServiceServicer):
    """Thin handlers: identify the caller, convert, delegate to the pipeline."""

    def __init__(self, pipeline: Pipeline, authenticator: Authenticator) -> None:
        self._pipeline = pipeline
        self._authenticator = authenticator

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Caller:
        try:
            metadata = tuple(context.invocation_metadata() or ())
            return self._authenticator.authenticate(metadata, context.auth_context())
        except ProxyError as error:
            audit.refused(method, "", "", error.reason)
            raise

    @streaming
    async def UpdateImageSetMetadata(
        self, request: pb.UpdateImageSetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.UpdateEvent]:
        caller = self._caller(context, "UpdateImageSetMetadata")
        async for event in self._pipeline.update(caller, to_update_request(request)):
            yield to_pb_event(event)

    @streaming
    async def WatchUpdate(
        self, request: pb.WatchUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.UpdateEvent]:
        caller = self._caller(context, "WatchUpdate")
        async for event in self._pipeline.watch(caller, request.operation_id):
            yield to_pb_event(event)

    @unary
    async def EvaluateUpdate(
        self, request: pb.UpdateImageSetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Evaluation:
        caller = self._caller(context, "EvaluateUpdate")
        plan, decision = await self._pipeline.evaluate(caller, to_update_request(request))
        return to_pb_evaluation(plan, decision)


# --- protobuf ↔ domain -------------------------------------------------------------------------


def to_update_request(request: pb.UpdateImageSetMetadataRequest) -> UpdateRequest:
    member = request.WhichOneof("updates")
    dicom = request.dicom_updates
    return UpdateRequest(
        datastore_id=request.datastore_id,
        image_set_id=request.image_set_id,
        latest_version_id=request.latest_version_id,
        force=request.force,
        include_study_image_sets=request.include_study_image_sets,
        updatable_attributes=dicom.updatable_attributes
        if dicom.HasField("updatable_attributes")
        else None,
        removable_attributes=dicom.removable_attributes
        if dicom.HasField("removable_attributes")
        else None,
        revert_to_version_id=request.revert_to_version_id
        if member == "revert_to_version_id"
        else None,
        kind={"dicom_updates": "dicom_updates", "revert_to_version_id": "revert"}.get(member or ""),  # type: ignore[arg-type]
        idempotency_key=request.idempotency_key,
    )


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def to_pb_state(status: ImageSetStatus) -> pb.ImageSetState:
    return pb.ImageSetState(
        datastore_id=status.datastore_id,
        image_set_id=status.image_set_id,
        latest_version_id=status.version_id,
        image_set_state=status.state,
        image_set_workflow_status=status.workflow_status,
        created_at=_timestamp(status.created_at),
        updated_at=_timestamp(status.updated_at),
        message=status.message,
    )


def to_pb_event(event: Event) -> pb.UpdateEvent:
    message = pb.UpdateEvent(operation_id=event.operation_id, at=_timestamp(event.at))
    match event:
        case Authorized(decision=decision):
            message.authorized.CopyFrom(
                pb.Authorized(decision_id=decision.decision_id, reasons=decision.reasons)
            )
        case Queued(position=position, estimated_start=start):
            message.queued.CopyFrom(pb.Queued(position=position, estimated_start=_timestamp(start)))
        case Submitted(status=status):
            message.submitted.CopyFrom(pb.Submitted(state=to_pb_state(status)))
        case StatusChanged(status=status):
            message.status.CopyFrom(pb.Status(state=to_pb_state(status)))
        case Finished(status=status):
            message.finished.CopyFrom(pb.Finished(state=to_pb_state(status)))
        case Heartbeat(status=status):
            message.heartbeat.CopyFrom(
                pb.Heartbeat(
                    image_set_state=status.state if status else "",
                    image_set_workflow_status=status.workflow_status if status else "",
                )
            )
    return message


def to_pb_evaluation(plan: UpdatePlan, decision: Decision) -> pb.Evaluation:
    return pb.Evaluation(
        decision=pb.Decision(
            allow=decision.allow, reasons=decision.reasons, decision_id=decision.decision_id
        ),
        changes=[
            pb.AttributeChange(
                action=c.action,
                level=c.level,
                series_uid=c.series_uid,
                instance_uid=c.instance_uid,
                tag=c.tag,
                keyword=c.keyword,
                vr=c.vr,
                private=c.private,
                requires_force=c.requires_force,
                categories=c.categories,
            )
            for c in plan.changes
        ],
        kind=plan.kind,
        revert_to_version_id=plan.revert_to_version_id,
        include_study_image_sets=plan.include_study_image_sets,
        force=plan.force,
    )


# --- lifecycle ---------------------------------------------------------------------------------


def _server_options(settings: Settings) -> list[tuple[str, Any]]:
    server = settings.server
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", server.max_message_bytes),
        ("grpc.max_send_message_length", server.max_message_bytes),
        ("grpc.server.max_pending_requests", server.max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", server.max_pending_requests * 3),
        ("grpc.keepalive_time_ms", int(server.keepalive_seconds * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if server.max_connection_age_seconds > 0:
        options.append(
            ("grpc.max_connection_age_ms", int(server.max_connection_age_seconds * 1000))
        )
    return options


async def _watch_policy_health(
    policy: PolicyClient, servicer: health.aio.HealthServicer, interval: float
) -> None:
    """Report NOT_SERVING while OPA cannot answer: every update would be refused anyway."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    while True:
        status = serving if await policy.healthy() else not_serving
        for name in ("", SERVICE_NAME):
            await servicer.set(name, status)
        await asyncio.sleep(interval)


async def run_server(
    settings: Settings,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM), then shut down in a fixed order."""
    stop = stop or asyncio.Event()
    authenticator = Authenticator.from_settings(settings.identity)
    async with AsyncExitStack() as stack:
        policy = await stack.enter_async_context(PolicyClient.open(settings.opa))
        backend = await stack.enter_async_context(HealthImaging.open(settings.backend))
        watcher = Watcher(backend, settings.watch)
        stack.push_async_callback(watcher.close)
        operations = Operations(backend, watcher, settings.watch)
        stack.push_async_callback(operations.close)

        server = grpc.aio.server(options=_server_options(settings))
        servicer = MetadataUpdateServicer(Pipeline(policy, operations), authenticator)
        pb_grpc.add_MetadataUpdateServiceServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.server.host}:{settings.server.port}"
        credentials = server_credentials(settings.identity)
        port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
        await server.start()
        monitor = asyncio.create_task(
            _watch_policy_health(policy, health_servicer, settings.opa.health_interval_seconds)
        )
        _install_signal_handlers(stop)
        log.info("serving", address=f"{settings.server.host}:{port}", tls=credentials is not None)
        if ready is not None:
            ready(port)
        await stop.wait()

        log.info("shutting_down", grace_seconds=settings.server.grace_seconds)
        monitor.cancel()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.server.grace_seconds)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
