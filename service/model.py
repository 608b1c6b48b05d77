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
State = Literal["queued", "submitting", "submitted", "unwatched", "finished", "failed"]
"""`unwatched`: submitted, but nobody follows it any more (the watch timed out); the next
WatchUpdate adopts it and watches again."""

FINISHED: frozenset[str] = frozenset({"finished", "failed"})
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
class Decision:
    """OPA's verdict on one update."""

    allow: bool
    reasons: tuple[str, ...]
    decision_id: str
    decision_id_source: DecisionIdSource = "opa"


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

    @property
    def finished(self) -> bool:
        return self.state in FINISHED
