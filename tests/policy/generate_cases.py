"""Policy cases driven by the standard's facts: documents → the real normaliser → OPA inputs.

For one attribute of every PS3.15 Table E.1-1 action code, UI attributes at every level and the
attributes issue 10 names, each written by keyword, upper- and lower-case hex, this writes the
OPA input the proxy would send (service.normaliser.updates.normalise +
service.policy.policy_input.build_input)
and the decision the allow-list promises, worked out here from the facts in that input. `opa
test policies/ tests/policy/` checks every case (standard_cases_test.rego); a pytest test fails
when the committed fixture is stale. Run `python -m tests.policy.generate_cases` to refresh it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from service.core.errors import InvalidArgument
from service.core.model import Caller, UpdatePlan, UpdateRequest
from service.normaliser import dicom
from service.normaliser.updates import normalise
from service.policy.policy_input import build_input

FIXTURE: Final = Path(__file__).with_name("standard_cases.json")
DATA: Final = Path(__file__).parents[2] / "policies" / "data.json"
DATASTORE, IMAGE_SET = "12345678901234567890123456789012", "abcdefabcdefabcdefabcdefabcdef01"
SERIES_UID, SOP_UID = "1.2.840.1.1", "1.2.840.1.1.1"
PRINCIPAL: Final = "jwt:https://idp.test.example#policy-cases"  # no grants: roles from the token
ADMIN, EDITOR = "metadata-admin", "metadata-editor"
IDENTITY, PRIVATE = "patient-identity-editor", "private-tag-editor"

# A value of the right format for each VR the cases use (numbers for the binary numeric VRs).
VALUES: Final[Mapping[str, object]] = {
    "AE": "STATION1", "AS": "042Y", "CS": "ABC", "DA": "20240101", "DS": "1.5",
    "DT": "20240101120000", "IS": "1", "LO": "TEXT", "LT": "TEXT", "PN": "DOE^JANE", "SH": "TEXT",
    "ST": "TEXT", "TM": "120000", "UC": "TEXT", "UI": "1.2.840.99", "UR": "http://example.com/",
    "UT": "TEXT", "FD": 1.5, "FL": 1.5, "SL": 1, "SS": 1, "UL": 1, "US": 1, "SQ": [{}],
}  # fmt: skip

# Attributes issue 10 names, and UI attributes at every level (patient: inside a sequence item).
NAMED: Final = (
    "StudyDescription", "SeriesDescription", "ImageComments", "BodyPartExamined", "PatientName",
    "PatientReligiousPreference", "MilitaryRank", "CountryOfResidence", "PersonAddress",
    "RequestingPhysician", "SOPClassUID", "TransferSyntaxUID", "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID",
)  # fmt: skip
NESTED: Final = (  # (sequence, attribute inside its item)
    ("ReferencedPatientSequence", "ReferencedSOPInstanceUID"),
    ("ReferencedStudySequence", "ReferencedSOPClassUID"),
)
SPELLINGS: Final = ("keyword", "TAG", "tag")


@dataclass(frozen=True)
class Written:
    """One attribute, where it is written and how its key is spelled."""

    keyword: str
    spelling: str
    sequence: str = ""  # keyword of the top-level sequence whose item holds it

    @property
    def key(self) -> str:
        tag = dicom.resolve_key(self.keyword).tag
        return {"keyword": self.keyword, "TAG": tag, "tag": tag.lower()}[self.spelling]

    @property
    def level(self) -> str:
        home = dicom.resolve_key(self.sequence or self.keyword).home_level
        return home or "instance"

    def document(self) -> dict[str, Any]:
        value = VALUES[dicom.resolve_key(self.keyword).vr]
        attributes: dict[str, Any] = {self.key: value}
        if self.sequence:
            attributes = {self.sequence: [attributes]}
        body: dict[str, Any] = {"DICOM": attributes}
        levels: dict[str, dict[str, Any]] = {
            "patient": {"Patient": body},
            "study": {"Study": body},
            "series": {"Study": {"Series": {SERIES_UID: body}}},
            "instance": {"Study": {"Series": {SERIES_UID: {"Instances": {SOP_UID: body}}}}},
        }
        return {"SchemaVersion": 1.1, **levels[self.level]}


def plan_for(written: Written) -> UpdatePlan | None:
    """The normalised plan, with force only when HealthImaging needs it; None when invalid."""
    for force in (False, True):
        request = UpdateRequest(
            DATASTORE, IMAGE_SET, "1", force, False,
            json.dumps(written.document()).encode(), None, None, "dicom_updates",
        )  # fmt: skip
        try:
            return normalise(request)
        except InvalidArgument:
            continue
    return None


REASONS: Final = {
    ADMIN: "UID changes require role metadata-admin",
    EDITOR: "metadata changes require role metadata-editor",
    IDENTITY: "patient identity changes require role patient-identity-editor",
    PRIVATE: "private tag changes require role private-tag-editor",
}


def roles_for(change: Mapping[str, Any], editable: Mapping[str, str]) -> set[str]:
    """The allow-list (docs/POLICIES.md), stated from one change's facts: the roles it needs."""
    needed = {ADMIN} if change["vr"] == "UI" or "uid" in change["categories"] else set()
    if change["private"]:
        needed.add(PRIVATE)
    listed = change["profile"] != "" and change["tag"] not in editable
    needed.add(IDENTITY if change["level"] == "patient" or listed else EDITOR)
    return needed


def needed_roles(opa_input: Mapping[str, Any], editable: Mapping[str, str]) -> set[str]:
    needed = {ADMIN} if opa_input["request"]["force"] else set()
    return needed.union(*(roles_for(change, editable) for change in opa_input["changes"]))


def expected_reasons(
    opa_input: Mapping[str, Any], roles: set[str], editable: Mapping[str, str]
) -> list[str]:
    reasons = {
        REASONS[role]
        for change in opa_input["changes"]
        for role in roles_for(change, editable) - roles
    }
    if opa_input["request"]["force"] and ADMIN not in roles:
        reasons.add("force requires role metadata-admin")
    return sorted(reasons)


def profile_examples() -> Iterator[str]:
    """For every action code, the first attribute of its table (by tag) that a valid document
    can change: in the dictionary, not retired, single-valued, a value format listed above."""
    for action in dicom.PROFILE_ACTIONS.values():
        found = ""
        # Group 0000 holds DIMSE command elements (PS3.7), never part of stored metadata.
        listed = dicom.profile_table()[0].items()
        for tag in sorted(t for t, a in listed if a == action and t >> 16):
            attribute = dicom.attribute_for_tag(tag)
            usable = attribute.keyword and not attribute.retired and attribute.vm == "1"
            writable = usable and attribute.vr in VALUES
            if writable and plan_for(Written(attribute.keyword, "keyword")):
                found = attribute.keyword
                break
        if not found:
            raise LookupError(f"no usable attribute for profile action {action}")
        yield found


def cases() -> dict[str, dict[str, Any]]:
    editable = json.loads(DATA.read_text())["imaging"]["editable"]
    attributes = [Written(k, s) for k in (*profile_examples(), *NAMED) for s in SPELLINGS]
    attributes += [Written(a, s, seq) for seq, a in NESTED for s in SPELLINGS]
    found: dict[str, dict[str, Any]] = {}
    for written in attributes:
        plan = plan_for(written)
        if plan is None:
            raise ValueError(f"no valid document writes {written}")
        where = f"{written.level}{'-in-' + written.sequence if written.sequence else ''}"
        name = f"{written.keyword}-{where}-{written.spelling}"
        editor_input = build_input(Caller(PRINCIPAL, "jwt", (EDITOR,)), plan)
        needed = needed_roles(editor_input, editable)
        for label, roles in (("editor", {EDITOR}), ("needed-roles", needed)):
            opa_input = build_input(Caller(PRINCIPAL, "jwt", tuple(sorted(roles))), plan)
            reasons = expected_reasons(opa_input, roles, editable)
            found[f"{name}-{label}"] = {
                "input": opa_input, "allow": not reasons, "reasons": reasons,
            }  # fmt: skip
    return found


def render(found: Mapping[str, Any]) -> str:
    """One case per line, sorted, so a change in the facts shows as a readable diff."""
    lines = [f"{json.dumps(k)}: {json.dumps(case, sort_keys=True)}" for k, case in found.items()]
    return '{"standard_cases": {\n' + ",\n".join(sorted(lines)) + "\n}}\n"


if __name__ == "__main__":
    FIXTURE.write_text(render(cases()))
    print(f"wrote {FIXTURE}")
