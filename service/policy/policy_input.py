"""Policy input: a caller and an update plan → the compact document OPA judges (pure, no I/O).

Each change carries the standard's facts about its attribute (service/normaliser/dicom.py); the
policy
decides from them. Changes of the same shape, everything but the series/instance UIDs and the
value, are one entry with a `count`, so OPA's work grows with the distinct attributes touched, not
with the document's size: removing 3,000 series is one entry.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any, Final

from service.core.model import AttributeChange, Caller, UpdatePlan
from service.normaliser import dicom

# The facts that make two changes the same for policy, in the order OPA sees them.
FACT_FIELDS: Final = (
    "action", "level", "tag", "keyword", "vr", "vm", "private", "retired", "profile",
    "requires_force", "categories", "within",
)  # fmt: skip

STANDARD: Final = {"ps3_15_edition": dicom.PS3_15_EDITION}


def build_input(
    caller: Caller,
    plan: UpdatePlan,
    send_values: bool = False,
    approved_by: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The OPA input document: who, what request, which attributes (values only if enabled),
    why; `approval.approved_by` only when the update is decided again after approvals."""
    document = {
        "caller": caller_input(caller),
        "request": {
            "datastore_id": plan.datastore_id,
            "image_set_id": plan.image_set_id,
            "latest_version_id": plan.latest_version_id,
            "force": plan.force,
            "include_study_image_sets": plan.include_study_image_sets,
            "kind": plan.kind,
            "revert_to_version_id": plan.revert_to_version_id,
        },
        "standard": dict(STANDARD),
        "changes": group_changes(plan.changes, send_values),
        "summary": plan.summary(),
        "purpose": purpose_input(plan),
    }
    if approved_by:
        document["approval"] = {"approved_by": list(approved_by)}
    return document


def purpose_input(plan: UpdatePlan) -> dict[str, Any]:
    """Why the caller asks: the purpose of use, the ticket, and of the justification only its
    length (it may hold patient data); `break_glass`: go ahead without a required approval."""
    return {
        "purpose_of_use": plan.purpose_of_use,
        "justification_length": len(plan.justification),
        "ticket": plan.ticket,
        "break_glass": plan.break_glass,
    }


def caller_input(caller: Caller) -> dict[str, Any]:
    return {
        "principal": caller.principal,
        "auth_method": caller.auth_method,
        "roles": list(caller.roles),
        "claims": dict(caller.claims),
    }


def group_changes(changes: Iterable[AttributeChange], send_values: bool) -> list[dict[str, Any]]:
    """One entry per distinct fact tuple, in first-seen order, with how many changes it stands
    for; with `send_values`, also each change's place and value (patient data: opt-in only)."""
    groups: dict[tuple[object, ...], dict[str, Any]] = {}
    for change in changes:
        key = _facts(change)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _entry(key, send_values)
        group["count"] += 1
        if send_values:
            group["values"].append(
                {
                    "series_uid": change.series_uid,
                    "instance_uid": change.instance_uid,
                    "value": change.value,
                }
            )
    return list(groups.values())


_fact_values = operator.attrgetter(*FACT_FIELDS)


def _facts(change: AttributeChange) -> tuple[object, ...]:
    facts: tuple[object, ...] = _fact_values(change)
    return facts


def _entry(facts: tuple[object, ...], send_values: bool) -> dict[str, Any]:
    entry: dict[str, Any] = dict(zip(FACT_FIELDS, facts, strict=True))
    entry["categories"] = list(entry["categories"])
    entry["count"] = 0
    if send_values:
        entry["values"] = []
    return entry
