"""An audit record as a FHIR R5 AuditEvent, built and validated by `fhir.resources`.

The mapping (docs/AUDIT.md): the agent is the principal, the entity is the image set by id, the
category is DICOM's "DICOM Instances Accessed" (an update) or "User Authentication" (a refusal
before the caller was known). The details carry ids and tags only: no PHI, as in the record.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from fhir.resources.auditevent import AuditEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
OUTCOMES = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
EVENTS = "urn:imaging-proxy:audit-event"
"""The proxy's own code for the record's `event` (decision, submit, finish, cancel, refusal)."""
PRINCIPALS = "urn:imaging-proxy:principal"
IMAGE_SETS = "urn:imaging-proxy:image-set"
"""Image sets are named "<datastore id>/<image set id>"."""

ACCESSED = ("110103", "DICOM Instances Accessed")
AUTHENTICATION = ("110114", "User Authentication")
_SUCCESS = {"allowed", "submitted", "cancelled", "UPDATED", "approved", "reviewed", "break_glass"}
_MINOR = {"denied", "UNAUTHENTICATED", "approval_required", "rejected", "expired"}
PURPOSES = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
"""HL7 v3 PurposeOfUse codes are ActReason codes: AuditEvent.authorization names the purpose."""


_validated: set[Hashable] = set()
"""The shapes of record whose events fhir.resources has found valid in this process."""


def to_fhir_json(record: dict[str, Any]) -> str:
    """One compact JSON line: the AuditEvent, validated by fhir.resources (ValidationError, a
    ValueError, if it is not valid).

    Each shape of record (which fields, empty or not, how many reasons) is validated once per
    process: pydantic's AuditEvent takes about 1.5 ms to validate and 3 ms to serialise one,
    far more than the whole rest of a decision. A shape decides which elements the event has;
    the values in them are the proxy's own (fixed codes, ids, one time format)."""
    event = to_fhir(record)
    shape = (
        tuple((key, bool(value)) for key, value in record.items()),
        len(record.get("reasons", ())),
    )
    if shape not in _validated:
        AuditEvent.model_validate(event)
        _validated.add(shape)
    return json.dumps(event, separators=(",", ":"))


def to_fhir(record: dict[str, Any]) -> dict[str, Any]:
    """The AuditEvent for an audit record (docs/audit.schema.json), as plain data."""
    refusal = record["event"] == "refusal"
    category = AUTHENTICATION if refusal else ACCESSED
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "category": [{"coding": [{"system": DCM, "code": category[0], "display": category[1]}]}],
        "code": {"coding": [{"system": EVENTS, "code": record["event"]}]},
        "action": "E" if refusal or record.get("rpc") == "EvaluateUpdate" else "U",
        "recorded": record["time"],
        "outcome": {
            "code": {"system": OUTCOMES, "code": _outcome_code(record["outcome"])},
            "detail": [
                {"text": record["outcome"]},
                *({"text": r} for r in record.get("reasons", ()) if r.strip()),
            ],
        },
        "agent": [_agent(record)],
        "source": {"observer": {"display": "imaging-proxy"}},
    }
    if record.get("image_set_id"):
        event["entity"] = [_entity(record)]
    if record.get("purpose_of_use"):
        event["authorization"] = [
            {"coding": [{"system": PURPOSES, "code": record["purpose_of_use"]}]}
        ]
    return event


def _outcome_code(outcome: str) -> str:
    """R5's audit-event-outcome: 0 success, 4 minor failure (refused), 8 serious failure."""
    if outcome in _SUCCESS:
        return "0"
    return "4" if outcome in _MINOR else "8"


def _agent(record: dict[str, Any]) -> dict[str, Any]:
    agent: dict[str, Any] = {"requestor": True, "policy": [f"urn:uuid:{record['decision_id']}"]}
    if record["principal"]:
        system = f"{PRINCIPALS}:{record['auth_method']}"
        agent["who"] = {"identifier": {"system": system, "value": record["principal"]}}
    else:  # refused before it was identified
        agent["who"] = {"display": "unidentified caller"}
    return agent


def _entity(record: dict[str, Any]) -> dict[str, Any]:
    image_set = f"{record['datastore_id']}/{record['image_set_id']}"
    details = {
        "decision_id": record["decision_id"],
        "decision_id_source": record["decision_id_source"],
        "operation_id": record.get("operation_id"),
        "owner": record.get("owner"),
        "kind": record.get("kind"),
        "tags": ",".join(record.get("tags", ())) or None,
        "ticket": record.get("ticket"),
        "break_glass": "true" if record.get("break_glass") else None,
        "justification_sha256": record.get("justification_sha256"),
    }
    return {
        "what": {"identifier": {"system": IMAGE_SETS, "value": image_set}},
        "detail": [
            {"type": {"text": name}, "valueString": value}
            for name, value in details.items()
            if value is not None
        ],
    }
