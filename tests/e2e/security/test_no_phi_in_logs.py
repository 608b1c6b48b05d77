"""The audit trail names tags, never values: a recognisable PatientName sent every way the proxy can
meet it (allowed, denied, invalid, evaluated, unauthenticated) must not appear in any log, while
the tags and the audit lines do. The secure stack's proxy runs at `--log-level debug`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.e2e.secure_stack import RPC_TIMEOUT, Layout, SecureStack, bearer, eventually
from tests.e2e.security.calls import (
    Refusal,
    Stubs,
    assert_updated,
    events_of,
    instance,
    patient,
    refusal,
    study,
    update,
)

pytestmark = pytest.mark.e2e

MARKER = "ZZTOPSECRET"
PHI = f"{MARKER}^PHI"
NAME_TAG = "patient:00100010"
T = RPC_TIMEOUT
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")


@dataclass(frozen=True)
class Traffic:
    """What the module sent: the image sets it touched and every refusal it received."""

    allowed: str
    denied: str
    refusals: tuple[Refusal, ...]
    tokens: tuple[str, ...]


def phi_documents(layout: Layout) -> list[dict[str, Any]]:
    """Invalid documents that carry the value where a careless error message would echo it."""
    sop = layout.series[layout.pair_series][0]
    return [
        study({"PatientName": PHI}),  # wrong level
        patient({"PatientName": PHI, "NotAKeyword": PHI}),
        patient({"PatientName": [PHI, {"PatientName": PHI}]}),
        patient({"PatientName": {"Alphabetic": PHI}}),
        instance(layout.pair_series, sop, {"DICOM": {"00191010": PHI}}),  # private without force
    ]


@pytest.fixture(scope="module")
async def traffic(secure_stack: SecureStack, stubs: Stubs) -> Traffic:
    allowed, denied = secure_stack.take_image_set(), secure_stack.take_image_set()
    layout = secure_stack.layout(denied)
    named = patient({"PatientName": PHI})
    # The editor holds a role but not patient identity: the policy reads and denies the document
    # (a caller without any role is refused before it is read, with nothing to audit but its id).
    admin, editor = stubs.service("admin"), stubs.service("editor")
    assert_updated(
        await events_of(admin.UpdateImageSetMetadata(update(allowed, named), timeout=RPC_TIMEOUT))
    )
    await admin.EvaluateUpdate(update(denied, named, removable=named), timeout=RPC_TIMEOUT)
    refusals = [await refusal(editor.UpdateImageSetMetadata(update(denied, named), timeout=T))]
    for document in phi_documents(layout):
        request = update(denied, document)
        refusals.append(await refusal(admin.UpdateImageSetMetadata(request, timeout=T)))
        refusals.append(await refusal(admin.EvaluateUpdate(request, timeout=T)))
    bad_token = secure_stack.token("svc-phi", (), exp=1)
    refusals.append(
        await refusal(
            admin.UpdateImageSetMetadata(
                update(denied, named), metadata=bearer(bad_token), timeout=T
            )
        )
    )
    good_token = secure_stack.token("svc-phi", ("patient-identity-editor",))
    await stubs.service("gateway").EvaluateUpdate(
        update(denied, named), metadata=bearer(good_token), timeout=RPC_TIMEOUT
    )
    return Traffic(allowed, denied, tuple(refusals), (bad_token, good_token))


def places_of(marker: str, text: str) -> list[str]:
    """Where `marker` shows in `text`: verbatim, or in a base64 run (botocore logs blobs so)."""
    found = ["verbatim"] if marker in text else []
    for run in _BASE64_RUN.findall(text):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = decode(run + "=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            if marker.encode() in decoded:
                found.append(f"base64 {run[:24]}…")
    return found


def structured_lines(text: str) -> list[dict[str, Any]]:
    """The proxy's own JSON log lines (structlog), without third-party library output."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return [line for line in lines if isinstance(line, dict) and "event" in line]


async def audit_lines(stack: SecureStack, *image_sets: str) -> list[dict[str, Any]]:
    async def written() -> list[dict[str, Any]]:
        audits = [json.loads(line) for line in stack.audit_path.read_text().splitlines()]
        by_image_set = [a for a in audits if a.get("image_set_id") in image_sets]
        assert {a["image_set_id"] for a in by_image_set} == set(image_sets)
        return by_image_set

    return await eventually(written)


async def test_the_audit_trail_names_tags_and_decisions_never_values(
    secure_stack: SecureStack, traffic: Traffic
) -> None:
    audits = await audit_lines(secure_stack, traffic.allowed, traffic.denied)

    outcomes = {(a["image_set_id"], a["outcome"]) for a in audits}
    assert (traffic.allowed, "UPDATED") in outcomes
    assert (traffic.denied, "denied") in outcomes
    assert all(NAME_TAG in a["tags"] for a in audits)
    assert all(a["decision_id"] and a["principal"] for a in audits)
    assert places_of(MARKER, json.dumps(audits)) == []


async def test_the_proxys_own_log_lines_never_carry_the_value(
    secure_stack: SecureStack, traffic: Traffic
) -> None:
    await audit_lines(secure_stack, traffic.allowed, traffic.denied)
    text = secure_stack.proxy_log.read_text(errors="replace")

    own = structured_lines(text)

    assert own, "the proxy's structured log is empty"
    assert places_of(MARKER, json.dumps(own)) == []


async def test_no_log_output_at_debug_level_carries_the_value(
    secure_stack: SecureStack, traffic: Traffic
) -> None:
    await audit_lines(secure_stack, traffic.allowed, traffic.denied)

    found = places_of(MARKER, secure_stack.proxy_log.read_text(errors="replace"))

    assert found == []


async def test_bearer_tokens_never_reach_the_logs(
    secure_stack: SecureStack, traffic: Traffic
) -> None:
    await audit_lines(secure_stack, traffic.allowed, traffic.denied)
    text = secure_stack.proxy_log.read_text(errors="replace")

    for token in traffic.tokens:
        assert token.split(".")[2] not in text, "a token signature was logged"


async def test_opa_decision_logs_see_tags_not_values(
    secure_stack: SecureStack, traffic: Traffic
) -> None:
    text = secure_stack.backend.opa_log.read_text(errors="replace")

    assert '"00100010"' in text, "OPA's decision log should show the touched tag"
    assert places_of(MARKER, text) == []


def test_refusals_sent_to_callers_never_echo_the_value(traffic: Traffic) -> None:
    codes = {refused.code for refused in traffic.refusals}

    assert {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED} <= codes
    assert grpc.StatusCode.UNAUTHENTICATED in codes
    for refused in traffic.refusals:
        assert MARKER not in refused.message
        assert not any(MARKER in field for field in refused.violations)
        assert MARKER not in str(refused.info)
