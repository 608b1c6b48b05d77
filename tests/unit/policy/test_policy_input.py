"""What goes to OPA (build_input: facts, grouped) and what comes back (parse_result)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from service.core.errors import PolicyUnavailable
from service.core.model import Caller, Decision, UpdatePlan, UpdateRequest
from service.normaliser.updates import normalise
from service.policy.decisions import parse_result
from service.policy.policy_input import FACT_FIELDS, build_input

CALLER = Caller("jwt:https://idp.example#svc", "jwt", ("metadata-editor",), {"email": "a@b.c"})


def plan(updatable: dict[str, Any] | None = None, removable: dict[str, Any] | None = None,
         force: bool = False) -> UpdatePlan:  # fmt: skip
    def blob(document: dict[str, Any] | None) -> bytes | None:
        return None if document is None else json.dumps({"SchemaVersion": 1.1, **document}).encode()

    request = UpdateRequest(
        datastore_id="1" * 32,
        image_set_id="a" * 32,
        latest_version_id="1",
        force=force,
        include_study_image_sets=False,
        updatable_attributes=blob(updatable),
        removable_attributes=blob(removable),
        revert_to_version_id=None,
        kind="dicom_updates",
    )
    return normalise(request)


def series(count: int) -> dict[str, Any]:
    return {"Study": {"Series": {f"1.2.{n}": {} for n in range(count)}}}


def instances(count: int, attributes: dict[str, Any]) -> dict[str, Any]:
    bodies = {f"1.2.3.{n}": {"DICOM": attributes} for n in range(count)}
    return {"Study": {"Series": {"1.2.3": {"Instances": bodies}}}}


def test_removing_many_series_is_one_entry_with_a_count() -> None:
    document = build_input(CALLER, plan(removable=series(300)))

    assert document["changes"] == [
        {
            "action": "remove_series", "level": "series", "tag": "", "keyword": "", "vr": "",
            "vm": "", "private": False, "retired": False, "profile": "", "requires_force": False,
            "categories": [], "within": "", "count": 300,
        }
    ]  # fmt: skip
    assert document["summary"]["removed_series"] == 300


def test_one_attribute_in_many_instances_is_one_entry() -> None:
    document = build_input(CALLER, plan(instances(40, {"ImageComments": "TEXT"})))

    [entry] = document["changes"]
    assert (entry["keyword"], entry["level"], entry["profile"], entry["count"]) == (
        "ImageComments", "instance", "X", 40,
    )  # fmt: skip


def test_distinct_attributes_stay_distinct_in_first_seen_order() -> None:
    attributes = {"ImageComments": "TEXT", "SOPClassUID": "1.2.840.99", "MilitaryRank": "X"}
    document = build_input(CALLER, plan(instances(5, attributes)))

    facts = [(c["keyword"], c["vr"], c["profile"], c["count"]) for c in document["changes"]]
    assert facts == [
        ("ImageComments", "LT", "X", 5),
        ("SOPClassUID", "UI", "", 5),
        ("MilitaryRank", "LO", "X", 5),
    ]


def test_nested_attributes_carry_their_sequence() -> None:
    item = {"ReferencedSOPInstanceUID": "1.2.840.99"}
    document = build_input(
        CALLER, plan(instances(1, {"ReferencedImageSequence": [item]}), force=True)
    )

    by_keyword = {c["keyword"]: c for c in document["changes"]}
    assert by_keyword["ReferencedSOPInstanceUID"]["within"] == "00081140"
    assert by_keyword["ReferencedSOPInstanceUID"]["vr"] == "UI"
    assert by_keyword["ReferencedImageSequence"]["within"] == ""


def test_entries_hold_only_facts_no_places_or_values() -> None:
    document = build_input(CALLER, plan(instances(3, {"PatientReligiousPreference": "SECRET"})))

    assert all(set(c) == {*FACT_FIELDS, "count"} for c in document["changes"])
    assert "SECRET" not in json.dumps(document)
    assert "1.2.3.0" not in json.dumps(document)
    assert document["standard"] == {"ps3_15_edition": "2026c"}


def test_values_only_when_enabled_with_their_places() -> None:
    document = build_input(CALLER, plan(instances(2, {"ImageComments": "TEXT"})), send_values=True)

    [entry] = document["changes"]
    assert entry["count"] == 2
    assert entry["values"] == [
        {"series_uid": "1.2.3", "instance_uid": "1.2.3.0", "value": "TEXT"},
        {"series_uid": "1.2.3", "instance_uid": "1.2.3.1", "value": "TEXT"},
    ]


def test_input_size_grows_with_distinct_attributes_not_with_the_document() -> None:
    small = build_input(CALLER, plan(removable=series(2)))
    large = build_input(CALLER, plan(removable=series(400)))

    assert len(large["changes"]) == len(small["changes"]) == 1
    assert len(json.dumps(large)) - len(json.dumps(small)) < 10  # only the counts differ


def test_caller_is_passed_as_verified() -> None:
    assert build_input(CALLER, plan(removable=series(1)))["caller"] == {
        "principal": "jwt:https://idp.example#svc", "auth_method": "jwt",
        "roles": ["metadata-editor"], "claims": {"email": "a@b.c"},
    }  # fmt: skip


# --- OPA's answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "decision"),
    [
        ({"result": {"allow": True, "reasons": []}, "decision_id": "d-1"},
         Decision(True, (), "d-1")),
        ({"result": {"allow": False, "reasons": ["a", "b"]}, "decision_id": "d-2"},
         Decision(False, ("a", "b"), "d-2")),
    ],
)  # fmt: skip
def test_well_formed_answers(response: dict[str, Any], decision: Decision) -> None:
    assert parse_result(response) == decision


@pytest.mark.parametrize(
    "response", [{"result": {"allow": False}}, {"result": {"allow": False}, "decision_id": ""}]
)
def test_without_an_opa_decision_id_the_proxy_makes_one(response: dict[str, Any]) -> None:
    """Decision logging off: OPA gives no id, so the proxy makes a fresh one and says so."""
    first, second = parse_result(response), parse_result(response)
    assert first.decision_id_source == second.decision_id_source == "proxy"
    assert uuid.UUID(first.decision_id) and first.decision_id != second.decision_id
    assert parse_result({**response, "decision_id": "d-9"}).decision_id_source == "opa"


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ({}, "undefined"),
        ({"decision_id": "d-1"}, "undefined"),
        ({"result": None}, "undefined"),
        ({"result": True}, "undefined"),
        ({"result": [True]}, "undefined"),
        ({"result": "allow"}, "undefined"),
        ({"result": {}}, "'allow' is not a boolean"),
        ({"result": {"allow": "true"}}, "'allow' is not a boolean"),
        ({"result": {"allow": 1}}, "'allow' is not a boolean"),
        ({"result": {"allow": None}}, "'allow' is not a boolean"),
        ({"result": {"allow": False, "reasons": "denied"}}, "'reasons' is not a list of strings"),
        ({"result": {"allow": False, "reasons": {"a": 1}}}, "'reasons' is not a list of strings"),
        ({"result": {"allow": False, "reasons": ["a", 7]}}, "'reasons' is not a list of strings"),
        ({"result": {"allow": False, "reasons": [None]}}, "'reasons' is not a list of strings"),
        ({"result": {"allow": True, "reasons": []}, "decision_id": 7},
         "'decision_id' is not a string"),
        ({"result": {"allow": True, "reasons": []}, "decision_id": None},
         "'decision_id' is not a string"),
    ],
)  # fmt: skip
def test_malformed_answers_fail_closed(response: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyUnavailable, match=problem) as refused:
        parse_result(response)
    assert refused.value.cause == ("undefined" if problem == "undefined" else "malformed")
