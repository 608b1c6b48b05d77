"""Audit records built by the functions the stages call, checked against the published schema and
mapped to FHIR AuditEvent (pure: no I/O but the sink's own file in a temporary folder)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fhir.resources.auditevent import AuditEvent

from service.core.config import AuditSettings
from service.core.model import Caller, Decision, RecordedError
from service.observability import audit
from service.observability.audit_fhir import to_fhir_json
from tests.unit.operations.inmemory import CALLER, new_record, plan_of, update_request

SCHEMA = json.loads((Path(__file__).parents[3] / "docs" / "audit.schema.json").read_text())
ADMIN = Caller("spiffe://hospital.example/ns/ops/sa/admin", "mtls")


def every_kind_of_record() -> list[dict[str, Any]]:
    record = new_record(update_request())
    plan = plan_of(record)
    error = RecordedError("UNAVAILABLE", "BACKEND_UNAVAILABLE", "no answer", None, "")
    failed = replace(record, error=error)
    with audit.capture() as records:
        audit.decided(CALLER, plan, Decision(True, (), "d-1"), "UpdateImageSetMetadata")
        audit.decided(CALLER, plan, Decision(False, ("no",), "d-2", "proxy"), "EvaluateUpdate")
        audit.no_role(CALLER, plan.datastore_id, "not an id", Decision(False, ("r",), "d-3"), "X")
        audit.unavailable(CALLER, plan.datastore_id, plan.image_set_id, "EvaluateUpdate", "timeout")
        audit.submitted(CALLER, record)
        audit.finished(CALLER, failed)
        audit.cancelled(ADMIN, record)
        audit.refused("WatchUpdate", "UNAUTHENTICATED")
        audit.access_decided(ADMIN, record, Decision(True, (), "d-4"), "WatchUpdate")
    return records


def test_every_record_is_valid_against_the_schema() -> None:
    records = every_kind_of_record()
    for record in records:
        jsonschema.validate(record, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert [r["event"] for r in records] == [
        "decision", "decision", "decision", "decision", "submit", "finish", "cancel", "refusal",
        "decision",
    ]  # fmt: skip
    assert records[2]["image_set_id"] == ""  # unchecked input is never written
    assert records[5]["outcome"] == "BACKEND_UNAVAILABLE"
    cancel = records[6]
    assert (cancel["principal"], cancel["owner"]) == (ADMIN.principal, CALLER.principal)
    assert records[3]["decision_id_source"] == records[7]["decision_id_source"] == "proxy"
    watch = records[8]  # an admin may watch another's operation: OPA's roles decided it
    assert (watch["rpc"], watch["owner"], watch["operation_id"]) == (
        "WatchUpdate", CALLER.principal, "op-1")  # fmt: skip


def test_the_schema_refuses_a_record_without_a_decision_id() -> None:
    record = every_kind_of_record()[0]
    del record["decision_id"]
    with pytest.raises(jsonschema.ValidationError, match="decision_id"):
        jsonschema.validate(record, SCHEMA)


def test_every_record_maps_to_a_valid_fhir_audit_event() -> None:
    for record in every_kind_of_record():
        event = AuditEvent.model_validate_json(to_fhir_json(record))
        assert event.recorded is not None and event.agent[0].requestor is True
    cancel = AuditEvent.model_validate_json(to_fhir_json(every_kind_of_record()[6]))
    assert cancel.agent[0].who.identifier.value == ADMIN.principal
    details = {d.type.text: d.valueString for d in cancel.entity[0].detail}
    assert details["owner"] == CALLER.principal and details["operation_id"] == "op-1"


def test_the_sink_appends_one_line_per_record_to_its_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": true}\n')
    with audit.opened(AuditSettings(path=str(path))):
        audit.refused("UpdateImageSetMetadata", "UNAUTHENTICATED")
    audit.refused("UpdateImageSetMetadata", "UNAUTHENTICATED")  # closed: goes nowhere
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["event"] == "refusal"


def test_a_sink_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=r"audit\.path"),
        audit.opened(AuditSettings(path=str(tmp_path / "missing" / "audit.jsonl"))),
    ):
        pass


def test_a_record_fhir_resources_finds_invalid_is_refused_not_written() -> None:
    """A shape not seen before is validated: a time that is no instant is a ValidationError."""
    record = {**every_kind_of_record()[0], "time": "yesterday", "shape": "never seen"}
    with pytest.raises(ValueError, match="recorded"):
        to_fhir_json(record)
