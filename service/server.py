"""Transport: the gRPC server, protobuf ↔ domain values, the one place errors become statuses."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2_grpc
from grpc_status import rpc_status

from service import audit, reflection
from service._proto.imaging.metadata.v1 import metadata_pb2 as pb
from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.config import ServerSettings, Settings
from service.errors import Internal, ProxyError, StartupError
from service.events import (
    Authorized,
    Cancelled,
    Event,
    Finished,
    Heartbeat,
    Queued,
    StatusChanged,
    Submitted,
)
from service.identity import Authenticator
from service.metrics import Metrics
from service.model import (
    Caller,
    Decision,
    ImageSetStatus,
    OperationQuery,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.open_streams import OpenStreams
from service.pipeline import Pipeline
from service.status import to_status
from service.steering import Steering
from service.tls import server_credentials
from service.updates import operation_id

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MetadataUpdateService"].full_name
T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ProxyError) -> NoReturn:
    """The only place a domain error becomes a gRPC status (with its rich details)."""
    await context.abort_with_status(rpc_status.to_status(to_status(error)))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _unexpected(method: str, exc: Exception) -> Internal:
    log.exception("unhandled_error", rpc=method)
    return Internal(f"internal error ({type(exc).__name__})")


def unary(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        outcome = self.outcome(handler.__name__)
        try:
            result = await handler(self, request, context)
            outcome.ok()
            return result
        except ProxyError as error:
            outcome.failed(error)
            await _abort(context, error)
        except Exception as exc:  # noqa: BLE001 - becomes INTERNAL; AbortError is raised by _abort only
            internal = _unexpected(handler.__name__, exc)
            outcome.failed(internal)
            await _abort(context, internal)
        finally:
            outcome.count()

    return wrapper


def streaming(
    handler: Callable[
        [Any, Caller, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[AsyncIterator[Event]]
    ],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[pb.UpdateEvent]]:
    """A status stream of an identified caller, counted against its open-stream bound: the
    handler returns the events, so an idle stream of an operation run here holds one generator
    (this one), its slot and its `LocalStream`, nothing per layer in between."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.UpdateEvent]:
        rpc = handler.__name__
        outcome = self.outcome(rpc)
        with outcome:
            try:
                caller = self._caller(context, rpc)
                with self.open_streams.hold(caller.principal, rpc):
                    async for event in await handler(self, caller, request, context):
                        yield to_pb_event(event)
                outcome.ok()
            except ProxyError as error:
                outcome.failed(error)
                await _abort(context, error)
            except Exception as exc:  # noqa: BLE001 - becomes INTERNAL; AbortError only from _abort
                internal = _unexpected(handler.__name__, exc)
                outcome.failed(internal)
                await _abort(context, internal)

    return wrapper


class _Outcome:
    """Counts one RPC by method and final status code (a client that leaves: CANCELLED); as a
    context manager, a stream open while its block runs (a plain object: an idle stream holds
    it for hours, and a generator-based context manager would hold a frame too)."""

    __slots__ = ("_code", "_metrics", "_rpc")

    def __init__(self, metrics: Metrics, rpc: str) -> None:
        self._metrics = metrics
        self._rpc = rpc
        self._code = "CANCELLED"

    def ok(self) -> None:
        self._code = "OK"

    def failed(self, error: ProxyError) -> None:
        self._code = error.status

    def count(self) -> None:
        self._metrics.requests.labels(self._rpc, self._code).inc()

    def __enter__(self) -> None:
        self._metrics.open_streams.labels(self._rpc).inc()

    def __exit__(self, *exc_info: object) -> None:
        self._metrics.open_streams.labels(self._rpc).dec()
        self.count()


class MetadataUpdateServicer(pb_grpc.MetadataUpdateServiceServicer):
    """Thin handlers: identify the caller, convert, delegate to the pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        steering: Steering,
        authenticator: Authenticator,
        metrics: Metrics,
        open_streams: OpenStreams,
    ) -> None:
        self._pipeline = pipeline
        self._steering = steering
        self._authenticator = authenticator
        self._metrics = metrics
        self.open_streams = open_streams

    def outcome(self, rpc: str) -> _Outcome:
        return _Outcome(self._metrics, rpc)

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Caller:
        try:
            metadata = tuple(context.invocation_metadata() or ())
            return self._authenticator.authenticate(metadata, context.auth_context())
        except ProxyError as error:
            audit.refused(method, error.reason)
            raise

    @streaming
    async def UpdateImageSetMetadata(
        self,
        caller: Caller,
        request: pb.UpdateImageSetMetadataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Event]:
        remaining = context.time_remaining()
        return await self._pipeline.update(caller, to_update_request(request), remaining)

    @streaming
    async def WatchUpdate(
        self,
        caller: Caller,
        request: pb.WatchUpdateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Event]:
        return await self._pipeline.watch(caller, operation_id(request.operation_id))

    @unary
    async def EvaluateUpdate(
        self, request: pb.UpdateImageSetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Evaluation:
        caller = self._caller(context, "EvaluateUpdate")
        update = to_update_request(request)
        plan, decision, shown = await self._pipeline.evaluate(
            caller, update, context.time_remaining(), request.include_policy_input
        )
        evaluation = to_pb_evaluation(plan, decision)
        evaluation.policy_input = shown
        return evaluation

    @unary
    async def ListOperations(
        self, request: pb.ListOperationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListOperationsResponse:
        caller = self._caller(context, "ListOperations")
        query = OperationQuery(
            principal=request.principal,
            datastore_id=request.datastore_id,
            image_set_id=request.image_set_id,
            state=request.state,
            max_results=request.max_results,
            next_token=request.next_token,
        )
        records, next_token = await self._steering.list(caller, query)
        return pb.ListOperationsResponse(
            operations=[to_pb_summary(r) for r in records], next_token=next_token
        )

    @unary
    async def GetOperation(
        self, request: pb.GetOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OperationSummary:
        caller = self._caller(context, "GetOperation")
        return to_pb_summary(await self._steering.get(caller, request.operation_id))

    @unary
    async def CancelUpdate(
        self, request: pb.CancelUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OperationSummary:
        caller = self._caller(context, "CancelUpdate")
        return to_pb_summary(await self._steering.cancel(caller, request.operation_id))


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
        case Cancelled(cancelled_by=by):
            message.cancelled.CopyFrom(pb.Cancelled(cancelled_by=by))
        case Heartbeat(status=status):
            message.heartbeat.CopyFrom(
                pb.Heartbeat(
                    image_set_state=status.state if status else "",
                    image_set_workflow_status=status.workflow_status if status else "",
                )
            )
    return message


def to_pb_summary(record: OperationRecord) -> pb.OperationSummary:
    """An operation as ListOperations and friends show it: ids, state, never the document."""
    request = record.request
    error = record.error
    return pb.OperationSummary(
        operation_id=record.id,
        principal=record.principal,
        datastore_id=request.datastore_id,
        image_set_id=request.image_set_id,
        latest_version_id=request.latest_version_id,
        kind=request.kind or "",
        state=record.state,
        created_at=_timestamp(record.created_at),
        decision_id=record.decision.decision_id,
        last_state=to_pb_state(record.last_status) if record.last_status else None,
        error_code=error.code if error else "",
        error_message=error.message if error else "",
        cancelled_by=record.cancelled_by,
    )


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


# --- listeners ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listeners:
    """The gRPC server (service, health, reflection) and an optional plaintext health-only one."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    probes_only: grpc.aio.Server | None
    """grpc.health.v1 alone, in plaintext on `health_port`: for probes without a certificate."""
    port: int
    tls: bool

    async def start(self) -> None:
        for listener in (self.server, self.probes_only):
            if listener is not None:
                await listener.start()

    async def not_serving(self) -> None:
        """Every health name NOT_SERVING (the first step of a shutdown)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, with a grace period for open streams; the probes-only listener
        answers NOT_SERVING throughout it."""
        started = time.monotonic()
        await self.server.stop(grace_seconds)
        log.info("stopped", waited_seconds=round(time.monotonic() - started, 3))
        if self.probes_only is not None:
            await self.probes_only.stop(None)


def listeners(
    settings: Settings,
    pipeline: Pipeline,
    steering: Steering,
    authenticator: Authenticator,
    metrics: Metrics,
) -> Listeners:
    """Bind the ports (port 0: any free one); nothing is served before `start`."""
    server = grpc.aio.server(options=settings.server.grpc_options())
    open_streams = OpenStreams(settings.limits, metrics)
    servicer = MetadataUpdateServicer(pipeline, steering, authenticator, metrics, open_streams)
    pb_grpc.add_MetadataUpdateServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((SERVICE_NAME, health.SERVICE_NAME), server)
    address = f"{settings.server.host}:{settings.server.port}"
    credentials = server_credentials(settings.identity)
    port = _bind(server, address, credentials, "port")
    probes_only = _probes_only(settings.server, health_servicer)
    return Listeners(server, health_servicer, probes_only, port, credentials is not None)


def _probes_only(
    settings: ServerSettings, health_servicer: health.aio.HealthServicer
) -> grpc.aio.Server | None:
    if not settings.health_port:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _bind(server, f"{settings.host}:{settings.health_port}", None, "health_port")
    return server


def _bind(
    server: grpc.aio.Server,
    address: str,
    credentials: grpc.ServerCredentials | None,
    key: str,
) -> int:
    """Listen on `address`; a port in use (or an address not ours) is a StartupError naming it."""
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:  # gRPC says only "Failed to bind"; the usual cause is a port in use
        raise StartupError(
            f"server.{key}: cannot listen on {address} (in use by another process?)"
        ) from None
