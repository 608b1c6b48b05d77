"""Transport: the gRPC server, protobuf ↔ domain values, the one place errors become statuses."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from service.core.errors import Internal, ProxyError
from service.core.model import (
    Caller,
    Decision,
    ImageSetStatus,
    OperationQuery,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.identity.callers import Authenticator
from service.normaliser.updates import operation_id
from service.observability import audit
from service.observability.metrics import Metrics
from service.operations.approvals import Approvals
from service.operations.events import (
    ApprovalRequired,
    Approved,
    Authorized,
    Cancelled,
    Event,
    Expired,
    Finished,
    Heartbeat,
    Queued,
    Rejected,
    StatusChanged,
    Submitted,
)
from service.operations.pipeline import Pipeline
from service.operations.steering import Steering
from service.transport.grpc_errors import to_status
from service.transport.open_streams import OpenStreams

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
        approvals: Approvals,
        authenticator: Authenticator,
        metrics: Metrics,
        open_streams: OpenStreams,
    ) -> None:
        self._pipeline = pipeline
        self._steering = steering
        self._approvals = approvals
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
            break_glass=request.break_glass,
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

    @unary
    async def ApproveUpdate(
        self, request: pb.ApproveUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OperationSummary:
        caller = self._caller(context, "ApproveUpdate")
        approved = await self._approvals.approve(
            caller, operation_id(request.operation_id), request.comment
        )
        return to_pb_summary(approved)

    @unary
    async def RejectUpdate(
        self, request: pb.RejectUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OperationSummary:
        caller = self._caller(context, "RejectUpdate")
        rejected = await self._approvals.reject(
            caller, operation_id(request.operation_id), request.comment
        )
        return to_pb_summary(rejected)

    @unary
    async def ReviewUpdate(
        self, request: pb.ReviewUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OperationSummary:
        caller = self._caller(context, "ReviewUpdate")
        reviewed = await self._approvals.review(
            caller, operation_id(request.operation_id), request.comment
        )
        return to_pb_summary(reviewed)


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
        purpose_of_use=request.purpose_of_use,
        justification=request.justification,
        ticket=request.ticket,
        break_glass=request.break_glass,
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
        case ApprovalRequired(approval=approval):
            message.approval_required.CopyFrom(
                pb.ApprovalRequired(
                    approver_roles=approval.roles,
                    approver_principals=approval.principals,
                    count=approval.count,
                    expires_at=_timestamp(approval.expires_at),
                    reasons=approval.reasons,
                    decision_id=approval.decision_id,
                )
            )
        case Approved(approved_by=by, approvals=approvals, count=count):
            message.approved.CopyFrom(pb.Approved(approved_by=by, approvals=approvals, count=count))
        case Rejected(rejected_by=by):
            message.rejected.CopyFrom(pb.Rejected(rejected_by=by))
        case Expired(at=at):
            message.expired.CopyFrom(pb.Expired(expired_at=_timestamp(at)))
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
    request, error, approval = record.request, record.error, record.approval
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
        purpose_of_use=request.purpose_of_use,
        ticket=request.ticket,
        break_glass=record.decision.break_glass,
        reviewed_by=record.reviewed_by,
        approved_by=approval.approved_by if approval else (),
        rejected_by=approval.rejected_by if approval else "",
        approval_expires_at=_timestamp(approval.expires_at)
        if approval and record.state == "awaiting_approval"
        else None,
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
