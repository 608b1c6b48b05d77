"""Update model: an UpdateImageSetMetadata request → a validated UpdatePlan, attributes classified.

Pure functions over bytes and dataclasses (no I/O, no protobufs). Anything ambiguous, or that
HealthImaging would refuse without looking at the image set, is refused with InvalidArgument
before the policy sees it; field paths name keys, never values. Map keys that are not plain
identifiers are written in brackets: `Study.Series["1.2.3"].DICOM["00100010"]`. The attribute
documents are read by service/normaliser/documents.py; the work is bounded by LimitSettings
(payload bytes
first, before parsing; then the number of changes).
"""

from __future__ import annotations

import re
from typing import Final, Literal

from service.core.config import LimitSettings
from service.core.errors import InvalidArgument, invalid
from service.core.model import AttributeChange, Kind, UpdatePlan, UpdateRequest, is_resource_id
from service.normaliser.documents import MAX_BLOB_BYTES as MAX_BLOB_BYTES
from service.normaliser.documents import MAX_VALUE_DEPTH as MAX_VALUE_DEPTH
from service.normaliser.documents import MAX_VIOLATIONS as MAX_VIOLATIONS
from service.normaliser.documents import DocumentReader, Violations
from service.normaliser.purpose import check_why

DICOM_UPDATES: Final = "updates.dicom_updates"
DEFAULT_LIMITS: Final = LimitSettings()

_VERSION = re.compile(r"[0-9]{1,20}")  # the API's \d+, ASCII only, bounded
_OPERATION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_IDEMPOTENCY_KEY_CHARS: Final = 128
_IDEMPOTENCY_KEY = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}")


def normalise(request: UpdateRequest, limits: LimitSettings = DEFAULT_LIMITS) -> UpdatePlan:
    """Validate and classify a request; raises InvalidArgument listing what is wrong."""
    violations = Violations()
    _check_ids(request, violations)
    kind = _check_kind(request, violations)
    check_why(request, violations)
    changes: list[AttributeChange] = []
    if kind == "dicom_updates" and _check_payload(request, limits, violations):
        blobs: tuple[tuple[str, bytes | None, Literal["update", "remove"]], ...] = (
            ("updatable_attributes", request.updatable_attributes, "update"),
            ("removable_attributes", request.removable_attributes, "remove"),
        )
        for name, blob, action in blobs:
            if blob is not None:
                reader = DocumentReader(
                    f"{DICOM_UPDATES}.{name}", action, request.force, violations
                )
                changes.extend(reader.read(blob))
        _check_change_count(len(changes), limits, violations)
    if violations.count or kind is None:
        raise InvalidArgument(violations.kept, violations.count)
    return UpdatePlan(
        datastore_id=request.datastore_id,
        image_set_id=request.image_set_id,
        latest_version_id=request.latest_version_id,
        force=request.force,
        include_study_image_sets=request.include_study_image_sets,
        kind=kind,
        revert_to_version_id=(request.revert_to_version_id or "") if kind == "revert" else "",
        changes=tuple(changes),
        updatable_attributes=request.updatable_attributes if kind == "dicom_updates" else None,
        removable_attributes=request.removable_attributes if kind == "dicom_updates" else None,
        idempotency_key=request.idempotency_key,
        purpose_of_use=request.purpose_of_use,
        justification=request.justification,
        ticket=request.ticket,
        break_glass=request.break_glass,
    )


def _check_payload(request: UpdateRequest, limits: LimitSettings, violations: Violations) -> bool:
    """Both documents together within max_payload_bytes; checked before any parsing (cheap)."""
    size = len(request.updatable_attributes or b"") + len(request.removable_attributes or b"")
    if size <= limits.max_payload_bytes:
        return True
    violations.add(
        DICOM_UPDATES,
        f"updatable_attributes and removable_attributes together are {size} bytes, over the "
        f"limit of {limits.max_payload_bytes} (limits.max_payload_bytes; HealthImaging's "
        "payload quota L-A880A4C2)",
    )
    return False


def _check_change_count(count: int, limits: LimitSettings, violations: Violations) -> None:
    if count > limits.max_changes:
        violations.add(
            DICOM_UPDATES,
            f"{count} changes, over the limit of {limits.max_changes} (limits.max_changes); "
            "split the update",
        )


# --- the request ---------------------------------------------------------------------------------


def _check_ids(request: UpdateRequest, violations: Violations) -> None:
    for name, value in (
        ("datastore_id", request.datastore_id),
        ("image_set_id", request.image_set_id),
    ):
        if not is_resource_id(value):
            violations.add(name, "must be 32 lower-case letters or digits")
    if not _VERSION.fullmatch(request.latest_version_id):
        violations.add("latest_version_id", "must be a version number (1 to 20 digits)")
    key = request.idempotency_key
    if key and not _IDEMPOTENCY_KEY.fullmatch(key):
        violations.add(
            "idempotency_key",
            f"must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} ASCII letters, digits, '.', '_', ':' or "
            f"'-', as a UUID is ({len(key)} characters given)",
        )


def operation_id(value: str) -> str:
    """A WatchUpdate's operation id, checked before anything looks it up: the UUID the proxy
    gave (`authorized` carries it); InvalidArgument otherwise, naming only its length."""
    if not _OPERATION_ID.fullmatch(value):
        raise invalid(
            "operation_id",
            "must be an operation id as the proxy gives it in every event (a lower-case UUID "
            f"of 36 characters; {len(value)} characters given)",
        )
    return value


def _check_kind(request: UpdateRequest, violations: Violations) -> Kind | None:
    dicom_given = (
        request.updatable_attributes is not None or request.removable_attributes is not None
    )
    revert_given = request.revert_to_version_id is not None
    kind = request.kind if request.kind in ("dicom_updates", "revert") else None
    if kind is None or (dicom_given and revert_given):
        violations.add("updates", "set exactly one of dicom_updates or revert_to_version_id")
        return None
    if kind == "dicom_updates" and not dicom_given:
        violations.add(DICOM_UPDATES, "set updatable_attributes, removable_attributes or both")
    if kind == "revert":
        if not _VERSION.fullmatch(request.revert_to_version_id or ""):
            violations.add(
                "updates.revert_to_version_id", "must be a version number (1 to 20 digits)"
            )
        if request.include_study_image_sets:
            violations.add("include_study_image_sets", "not supported with revert_to_version_id")
    return kind
