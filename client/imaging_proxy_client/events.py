"""The client library's values: an update's events and image-set state as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from imaging_proxy_client.errors import ClientError
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2


@dataclass(frozen=True)
class ImageSetState:
    """An image set's state as HealthImaging reports it."""

    datastore_id: str
    image_set_id: str
    latest_version_id: str
    image_set_state: str
    """ACTIVE, LOCKED or DELETED."""
    workflow_status: str
    """E.g. UPDATING, UPDATED, UPDATE_FAILED."""
    message: str
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Authorized:
    """The policy allowed the update."""

    operation_id: str
    decision_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Queued:
    """The update waits behind others on the same image set."""

    operation_id: str
    position: int
    """1 = next to be submitted."""
    estimated_start: datetime | None


@dataclass(frozen=True)
class Submitted:
    """HealthImaging acknowledged the update: from here a lost connection means re-attach."""

    operation_id: str
    state: ImageSetState


@dataclass(frozen=True)
class Status:
    """A workflow status read while HealthImaging works."""

    operation_id: str
    state: ImageSetState


@dataclass(frozen=True)
class Heartbeat:
    """The proxy is alive and still waiting."""

    operation_id: str
    image_set_state: str
    workflow_status: str


@dataclass(frozen=True)
class Finished:
    """The update ended; `state.workflow_status` says how (UPDATED or UPDATE_FAILED)."""

    operation_id: str
    state: ImageSetState


@dataclass(frozen=True)
class Cancelled:
    """The update was cancelled before it was submitted (CancelUpdate); nothing was written."""

    operation_id: str
    cancelled_by: str


@dataclass(frozen=True)
class ApprovalRequired:
    """The policy wants the update approved first: by whom, how many, until when."""

    operation_id: str
    approver_roles: tuple[str, ...]
    approver_principals: tuple[str, ...]
    count: int
    expires_at: datetime | None
    reasons: tuple[str, ...]
    decision_id: str


@dataclass(frozen=True)
class Approved:
    """One approval given (`Authorized` follows once enough are)."""

    operation_id: str
    approved_by: str
    approvals: int
    count: int


@dataclass(frozen=True)
class Rejected:
    """An approver rejected the update; nothing was written."""

    operation_id: str
    rejected_by: str


@dataclass(frozen=True)
class Expired:
    """Nobody approved the update in time; nothing was written."""

    operation_id: str


@dataclass(frozen=True)
class Why:
    """Why an update is asked for, sent with it: an HL7 v3 PurposeOfUse code (TREAT, HOPERAT,
    PATADMIN...), a justification (it may name a patient: the proxy keeps it sealed and audits
    its digest only), a ticket reference; `break_glass` to go ahead without a required approval
    (a break-glass role and a justification needed)."""

    purpose_of_use: str = ""
    justification: str = field(default="", repr=False)
    ticket: str = ""
    break_glass: bool = False


@dataclass(frozen=True)
class Retrying:
    """The client lost the stream (or was told to come back) and tries again after `delay`."""

    operation_id: str
    """Set when the client re-attaches; empty when it re-sends with the same idempotency key."""
    error: ClientError
    delay: float


UpdateEvent = (
    Authorized
    | Queued
    | Submitted
    | Status
    | Heartbeat
    | Finished
    | Cancelled
    | ApprovalRequired
    | Approved
    | Rejected
    | Expired
    | Retrying
)


def image_set_state(state: metadata_pb2.ImageSetState) -> ImageSetState:
    """The proto state as a value."""
    return ImageSetState(
        datastore_id=state.datastore_id,
        image_set_id=state.image_set_id,
        latest_version_id=state.latest_version_id,
        image_set_state=state.image_set_state,
        workflow_status=state.image_set_workflow_status,
        message=state.message,
        created_at=state.created_at.ToDatetime() if state.HasField("created_at") else None,
        updated_at=state.updated_at.ToDatetime() if state.HasField("updated_at") else None,
    )


def from_proto(event: metadata_pb2.UpdateEvent) -> UpdateEvent | None:
    """The proto event as a value; None for a kind this version does not know."""
    op = event.operation_id
    match event.WhichOneof("event"):
        case "authorized":
            return Authorized(op, event.authorized.decision_id, tuple(event.authorized.reasons))
        case "queued":
            queued = event.queued
            start = queued.estimated_start if queued.HasField("estimated_start") else None
            return Queued(op, queued.position, start.ToDatetime() if start else None)
        case "submitted":
            return Submitted(op, image_set_state(event.submitted.state))
        case "status":
            return Status(op, image_set_state(event.status.state))
        case "heartbeat":
            beat = event.heartbeat
            return Heartbeat(op, beat.image_set_state, beat.image_set_workflow_status)
        case "finished":
            return Finished(op, image_set_state(event.finished.state))
        case "cancelled":
            return Cancelled(op, event.cancelled.cancelled_by)
        case "approval_required":
            asked = event.approval_required
            expires = asked.expires_at.ToDatetime() if asked.HasField("expires_at") else None
            roles, principals = tuple(asked.approver_roles), tuple(asked.approver_principals)
            reasons = tuple(asked.reasons)
            return ApprovalRequired(op, roles, principals, asked.count, expires, reasons,
                                    asked.decision_id)  # fmt: skip
        case "approved":
            given = event.approved
            return Approved(op, given.approved_by, given.approvals, given.count)
        case "rejected":
            return Rejected(op, event.rejected.rejected_by)
        case "expired":
            return Expired(op)
    return None


@dataclass(frozen=True)
class OperationSummary:
    """An operation as ListOperations, GetOperation and CancelUpdate show it (no document)."""

    operation_id: str
    principal: str
    datastore_id: str
    image_set_id: str
    latest_version_id: str
    kind: str
    state: str
    """awaiting_approval, queued, submitting, submitted, unwatched, finished, failed,
    cancelled, rejected or expired."""
    created_at: datetime | None
    decision_id: str
    last_state: ImageSetState | None
    error_code: str
    error_message: str
    cancelled_by: str
    purpose_of_use: str = ""
    ticket: str = ""
    break_glass: bool = False
    """It went ahead without a required approval: to review."""
    reviewed_by: str = ""
    approved_by: tuple[str, ...] = ()
    rejected_by: str = ""
    approval_expires_at: datetime | None = None
    """While awaiting approval: when it expires."""


def operation_summary(summary: metadata_pb2.OperationSummary) -> OperationSummary:
    """The proto summary as a value."""
    return OperationSummary(
        operation_id=summary.operation_id,
        principal=summary.principal,
        datastore_id=summary.datastore_id,
        image_set_id=summary.image_set_id,
        latest_version_id=summary.latest_version_id,
        kind=summary.kind,
        state=summary.state,
        created_at=summary.created_at.ToDatetime() if summary.HasField("created_at") else None,
        decision_id=summary.decision_id,
        last_state=image_set_state(summary.last_state) if summary.HasField("last_state") else None,
        error_code=summary.error_code,
        error_message=summary.error_message,
        cancelled_by=summary.cancelled_by,
        purpose_of_use=summary.purpose_of_use,
        ticket=summary.ticket,
        break_glass=summary.break_glass,
        reviewed_by=summary.reviewed_by,
        approved_by=tuple(summary.approved_by),
        rejected_by=summary.rejected_by,
        approval_expires_at=summary.approval_expires_at.ToDatetime()
        if summary.HasField("approval_expires_at")
        else None,
    )


@dataclass(frozen=True)
class AttributeChange:
    """One change an update would make, by tag and keyword (never its value)."""

    action: str
    """update, remove, remove_series or remove_instance."""
    level: str
    """patient, study, series or instance."""
    tag: str
    keyword: str
    vr: str
    private: bool
    requires_force: bool
    categories: tuple[str, ...]
    series_uid: str
    instance_uid: str


@dataclass(frozen=True)
class Evaluation:
    """The dry run's answer: the policy's decision and the changes it was asked about."""

    allow: bool
    reasons: tuple[str, ...]
    decision_id: str
    kind: str
    """dicom_updates or revert."""
    changes: tuple[AttributeChange, ...]
    revert_to_version_id: str
    include_study_image_sets: bool
    force: bool
    policy_input: str = ""
    """The exact JSON the proxy sent to OPA (asked with include_policy_input, when allowed)."""


def evaluation(result: metadata_pb2.Evaluation) -> Evaluation:
    """The proto evaluation as a value."""
    return Evaluation(
        allow=result.decision.allow,
        reasons=tuple(result.decision.reasons),
        decision_id=result.decision.decision_id,
        kind=result.kind,
        changes=tuple(
            AttributeChange(
                c.action,
                c.level,
                c.tag,
                c.keyword,
                c.vr,
                c.private,
                c.requires_force,
                tuple(c.categories),
                c.series_uid,
                c.instance_uid,
            )
            for c in result.changes
        ),
        revert_to_version_id=result.revert_to_version_id,
        include_study_image_sets=result.include_study_image_sets,
        force=result.force,
        policy_input=result.policy_input,
    )
