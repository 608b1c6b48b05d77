"""Value types: what the stages pass forward, frozen, in the order a request meets them (no I/O)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

AuthMethod = Literal["mtls", "jwt", "dev"]
Kind = Literal["dicom_updates", "revert"]
Level = Literal["patient", "study", "series", "instance"]
Action = Literal["update", "remove", "remove_series", "remove_instance"]
DecisionIdSource = Literal["opa", "proxy"]
"""Who made a decision id: OPA (its decision log has the entry) or the proxy (OPA gave none:
decision logging is off, or OPA did not answer)."""
State = Literal[
    "awaiting_approval",
    "queued",
    "submitting",
    "submitted",
    "unwatched",
    "finished",
    "failed",
    "cancelled",
    "rejected",
    "expired",
]
"""`awaiting_approval`: the policy wants approval first (nothing queued, nothing submitted).
`unwatched`: submitted, but nobody follows it any more (the watch timed out); the next
WatchUpdate adopts it and watches again. `cancelled`: taken back before its submit. `rejected`,
`expired`: an approver said no, or nobody said yes in time; nothing was written."""

FINISHED: frozenset[str] = frozenset({"finished", "failed", "cancelled", "rejected", "expired"})
CANCELLABLE: frozenset[str] = frozenset({"queued", "awaiting_approval"})
"""From `submitting` on, the write may be on its way to HealthImaging: it cannot be taken back."""
_RESOURCE_ID = re.compile(r"[0-9a-z]{32}")


def is_resource_id(value: str) -> bool:
    """A HealthImaging data store or image set id (the API's `[0-9a-z]{32}`)."""
    return _RESOURCE_ID.fullmatch(value) is not None


def decision_id(given: object) -> tuple[str, DecisionIdSource]:
    """OPA's decision id when it gave one, else a fresh one of the proxy's (never empty)."""
    if isinstance(given, str) and given:
        return given, "opa"
    return str(uuid.uuid4()), "proxy"


TERMINAL_WORKFLOW_STATUSES = frozenset({"UPDATED", "UPDATE_FAILED", "DELETED"})


@dataclass(frozen=True)
class Caller:
    """Who is calling, as proven by one identity source."""

    principal: str
    auth_method: AuthMethod
    roles: tuple[str, ...] = ()
    """From a verified JWT's roles claim; () otherwise."""
    claims: Mapping[str, object] = field(default_factory=dict, hash=False)
    """Verified JWT claims (JSON-able); {} otherwise."""


@dataclass(frozen=True)
class UpdateRequest:
    """The gRPC request without protobufs, built by the server."""

    datastore_id: str
    image_set_id: str
    latest_version_id: str
    force: bool
    include_study_image_sets: bool
    updatable_attributes: bytes | None  # None = not given; b"" is given and empty (invalid)
    removable_attributes: bytes | None
    revert_to_version_id: str | None
    kind: Kind | None  # which union member was set; None = neither
    idempotency_key: str = ""
    purpose_of_use: str = ""  # an HL7 v3 PurposeOfUse code; "" = not given
    justification: str = field(default="", repr=False)  # may hold patient data: never logged
    ticket: str = ""
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class AttributeChange:
    """One touched attribute (or one removed series/instance), classified."""

    action: Action
    level: Level
    series_uid: str  # "" when not at series/instance level
    instance_uid: str  # "" when not at instance level
    tag: str  # 8 upper-case hex digits; "" for remove_series/remove_instance
    keyword: str  # "" for private/unknown tags
    vr: str  # dictionary VR, DICOMVRs for private tags, "" if unknown
    private: bool  # odd group
    requires_force: bool  # HealthImaging refuses it without force
    categories: tuple[str, ...]  # sorted
    vm: str = ""  # dictionary VM ("1", "1-n"); "" if unknown or not an attribute change
    retired: bool = False  # the dictionary marks the attribute retired
    profile: str = ""  # PS3.15 Table E.1-1 action ("X", "Z", "D", "U", "X/Z"...); "" = not listed
    within: str = ""  # tag of the top-level sequence this attribute is nested in; "" = top level
    value: object = field(default=None, repr=False, compare=False)  # patient data: never logged


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """A validated update: what is forwarded to HealthImaging and what policy judges."""

    datastore_id: str
    image_set_id: str
    latest_version_id: str
    force: bool
    include_study_image_sets: bool
    kind: Kind
    revert_to_version_id: str  # "" unless kind == "revert"
    changes: tuple[AttributeChange, ...]
    # The very bytes that were classified, forwarded as they are; patient data, so not in repr.
    updatable_attributes: bytes | None = field(repr=False)
    removable_attributes: bytes | None = field(repr=False)
    idempotency_key: str
    purpose_of_use: str = ""
    justification: str = field(default="", repr=False)  # may hold patient data: never logged
    ticket: str = ""
    break_glass: bool = False

    def summary(self) -> dict[str, object]:
        """Counts and sets for policy and logs (JSON-able, no values)."""
        changes = self.changes
        categories = sorted({c for change in changes for c in change.categories})
        return {
            "change_count": len(changes),
            "categories": categories,
            "actions": sorted({change.action for change in changes}),
            "levels": sorted({change.level for change in changes}),
            "private": "private" in categories,
            "requires_force": any(change.requires_force for change in changes),
            "removed_series": sum(change.action == "remove_series" for change in changes),
            "removed_instances": sum(change.action == "remove_instance" for change in changes),
        }

    def touched_tags(self) -> tuple[str, ...]:
        """Sorted unique "level:TAG" strings for the audit log (removals: "level:action")."""
        return tuple(sorted({f"{c.level}:{c.tag or c.action}" for c in self.changes}))


@dataclass(frozen=True)
class ApprovalNeed:
    """What the policy asks before an update may go ahead: who may approve, how many, how long."""

    roles: tuple[str, ...]
    principals: tuple[str, ...]
    count: int
    ttl_seconds: float


@dataclass(frozen=True)
class Decision:
    """OPA's verdict on one update."""

    allow: bool
    reasons: tuple[str, ...]
    decision_id: str
    decision_id_source: DecisionIdSource = "opa"
    approval: ApprovalNeed | None = None
    """Not allowed yet, but allowed once approved as this says (`allow` is False)."""
    break_glass: bool = False
    """Allowed only because the caller broke the glass on a required approval."""

    @property
    def needs_approval(self) -> bool:
        return not self.allow and self.approval is not None


@dataclass(frozen=True)
class Approval:
    """An operation's approval: what was asked, and what the approvers have said so far."""

    roles: tuple[str, ...]
    principals: tuple[str, ...]
    count: int
    expires_at: float
    reasons: tuple[str, ...]
    """The reasons of the decision that asked for it."""
    decision_id: str
    approved_by: tuple[str, ...] = ()
    rejected_by: str = ""

    @classmethod
    def asked(cls, decision: Decision, now: float) -> Approval:
        need = decision.approval
        assert need is not None
        expires_at = now + need.ttl_seconds
        return cls(need.roles, need.principals, need.count, expires_at, decision.reasons,
                   decision.decision_id)  # fmt: skip

    @property
    def complete(self) -> bool:
        return len(self.approved_by) >= self.count


class ImageSetKey(NamedTuple):
    """One image set: what admission holds, the journal marks in flight and the watch polls.

    A named tuple rather than a dataclass: it is a dict key, and the journals store it as
    "datastore/image set" and read it back by unpacking.
    """

    datastore_id: str
    image_set_id: str


@dataclass(frozen=True)
class ImageSetStatus:
    """An image set version as HealthImaging reports it."""

    datastore_id: str
    image_set_id: str
    version_id: str
    state: str
    workflow_status: str
    created_at: float | None = None
    updated_at: float | None = None
    message: str = ""

    @property
    def terminal(self) -> bool:
        """The update that produced this version has finished (or the image set is gone)."""
        return self.state != "LOCKED" and self.workflow_status in TERMINAL_WORKFLOW_STATUSES

    def untouched_since(self, version_id: str) -> bool:
        """Still at `version_id` and not being changed: an update naming it has not landed."""
        return self.version_id == version_id and self.state != "LOCKED"


@dataclass(frozen=True)
class RecordedError:
    """How an operation failed, as the caller was (and will again be) told."""

    code: str  # gRPC status name (errors.StatusName)
    reason: str
    message: str
    retry_after_seconds: float = 0.0
    aws_code: str = ""  # HealthImaging's error code, when it gave one


@dataclass(frozen=True)
class OperationQuery:
    """ListOperations' filters ("" = any) and page."""

    principal: str = ""
    datastore_id: str = ""
    image_set_id: str = ""
    state: str = ""
    max_results: int = 0
    """0 = the default page size."""
    next_token: str = ""
    break_glass: bool = False
    """Only operations that broke the glass (to review)."""


@dataclass(frozen=True)
class OperationRecord:
    """Everything needed to re-stream an operation, or to resume it after a restart."""

    id: str
    principal: str
    auth_method: str
    roles: tuple[str, ...]
    request: UpdateRequest
    """Without its document once the operation can no longer submit (see `records.at_rest`)."""
    decision: Decision
    fingerprint: str
    created_at: float
    deadline: float | None
    """Epoch seconds by which the submit must have started (the call's deadline)."""
    state: State = "queued"
    seq: int = 0
    """Number of the last event journaled: replayed events and live ones meet here."""
    submitted: ImageSetStatus | None = None
    last_status: ImageSetStatus | None = None
    error: RecordedError | None = None
    touched: tuple[str, ...] = ()
    """The audit's "level:TAG" list (no values), for an operation resumed without its document."""
    inflight_until: float = 0.0
    """Epoch seconds until which a submit sent by an earlier owner may still land (its call's
    connect and read timeouts): a successor does not read "version unchanged" as "never sent"
    before then."""
    epoch: int = 0
    """Fencing epoch (shared journal): grows at every change of owner; the journal refuses a
    save from an older one, and streams order events by (epoch, seq)."""
    cancelled_by: str = ""
    """The principal who cancelled it (state `cancelled`)."""
    approval: Approval | None = None
    """The approval the policy asked for (state `awaiting_approval`, and after)."""
    reviewed_by: str = ""
    """A break-glass operation: the principal who reviewed it ("" = not yet)."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED
