"""Issue 4 end to end: every default policy rule, allowed and denied, over mTLS and over JWT.

Real OPA with policies/, the emulator, and `imaging-proxy serve` with mTLS + JWT. mTLS callers get
their roles from the SPIFFE grants in policies/data.json (admin, editor, viewer); JWT callers
(presenting the "gateway" certificate, which no grant names) get exactly the roles in their
token, so each denial can be pinned to one rule's reason.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb

from tests.e2e.secure_stack import (
    DATASTORE_ID,
    OTHER_DATASTORE_ID,
    RPC_TIMEOUT,
    Credentials,
    Layout,
    SecureStack,
    eventually,
    spiffe_id,
)
from tests.e2e.security.calls import (
    Refusal,
    Stubs,
    assert_denied,
    assert_updated,
    events_of,
    instance,
    patient,
    refusal,
    revert,
    series,
    study,
    update,
)
from tests.support.pki import ISSUER

pytestmark = pytest.mark.e2e

ADMIN, EDITOR = "metadata-admin", "metadata-editor"
PRIVATE, IDENTITY = "private-tag-editor", "patient-identity-editor"
NO_ROLE = "caller holds no role on this datastore"
NO_ROLE_CLIENTS = frozenset({"viewer", "stranger", "gateway"})
"""Certificates whose SPIFFE ID holds no role: the gate refuses them before the policy decides."""
GRANTED_SUBJECT = "svc-reporting"
"""policies/data.json grants jwt:<test issuer>#svc-reporting metadata-editor in DATASTORE_ID."""
EDITOR_REASON = "metadata changes require role metadata-editor"
Via = Literal["mtls", "jwt"]


@dataclass(frozen=True)
class Rule:
    """One default rule: a request it judges, who passes it and who fails it (and why)."""

    name: str
    build: Callable[[Layout], pb.UpdateImageSetMetadataRequest]
    allowed_roles: tuple[str, ...]
    denied_roles: tuple[str, ...]
    reasons: frozenset[str]
    """Exactly what OPA answers for `denied_roles`."""
    mtls_allowed: str = "admin"
    mtls_denied: str = "editor"
    prepared: bool = False
    """The request needs a version 2 made by an admin first (revert)."""


def _private_tag(layout: Layout) -> pb.UpdateImageSetMetadataRequest:
    body = {"DICOM": {"00191010": "PRIVATE"}, "DICOMVRs": {"00191010": "LO"}}
    sop = layout.series[layout.pair_series][0]
    return update(layout.image_set_id, instance(layout.pair_series, sop, body), force=True)


def _patient_address(layout: Layout) -> pb.UpdateImageSetMetadataRequest:
    body = {"DICOM": {"PatientAddress": "1 Test Street"}}
    sop = layout.series[layout.pair_series][0]
    return update(layout.image_set_id, instance(layout.pair_series, sop, body))


def _remove_instance(layout: Layout) -> pb.UpdateImageSetMetadataRequest:
    sop = layout.series[layout.pair_series][1]
    return update(layout.image_set_id, removable=instance(layout.pair_series, sop, {}))


def _study_update(
    attribute: str, force: bool = False, include_study: bool = False
) -> Callable[[Layout], pb.UpdateImageSetMetadataRequest]:
    def build(layout: Layout) -> pb.UpdateImageSetMetadataRequest:
        document = study({attribute: "EDITED 1"})
        return update(layout.image_set_id, document, force=force, include_study=include_study)

    return build


RULES = (
    Rule(
        "force",
        _study_update("StudyDescription", force=True),
        (ADMIN, EDITOR),
        (EDITOR,),
        frozenset({"force requires role metadata-admin"}),
    ),
    Rule(
        "private_tag",
        _private_tag,
        (ADMIN, EDITOR, PRIVATE),
        (ADMIN, EDITOR),
        frozenset({"private tag changes require role private-tag-editor"}),
    ),
    Rule(
        "uid",
        _study_update("StudyID", force=True),
        (ADMIN, IDENTITY),  # StudyID is also listed by the PS3.15 profile (Z): identity too
        (EDITOR, PRIVATE, IDENTITY),
        frozenset(
            {"UID changes require role metadata-admin", "force requires role metadata-admin"}
        ),
    ),
    Rule(
        "remove_series",
        lambda layout: update(layout.image_set_id, removable=series(layout.single_series, {})),
        (ADMIN,),
        (EDITOR, PRIVATE, IDENTITY),
        frozenset({"removing series or instances requires role metadata-admin"}),
    ),
    Rule(
        "remove_instance",
        _remove_instance,
        (ADMIN,),
        (EDITOR, PRIVATE, IDENTITY),
        frozenset({"removing series or instances requires role metadata-admin"}),
    ),
    Rule(
        "revert",
        lambda layout: revert(layout.image_set_id, to_version="1", version="2"),
        (ADMIN,),
        (EDITOR, PRIVATE, IDENTITY),
        frozenset({"revert requires role metadata-admin"}),
        prepared=True,
    ),
    Rule(
        "include_study",
        _study_update("StudyDescription", include_study=True),
        (ADMIN, EDITOR),
        (EDITOR,),
        frozenset({"include_study_image_sets requires role metadata-admin"}),
    ),
    Rule(
        "patient_identity",
        lambda layout: update(layout.image_set_id, patient({"PatientName": "CHANGED^NAME"})),
        (IDENTITY,),
        (ADMIN, EDITOR, PRIVATE),
        frozenset({"patient identity changes require role patient-identity-editor"}),
    ),
    Rule(
        "patient_identity_at_instance_level",
        _patient_address,
        (IDENTITY,),
        (ADMIN, EDITOR, PRIVATE),
        frozenset({"patient identity changes require role patient-identity-editor"}),
    ),
    Rule(
        "metadata_editor",
        _study_update("StudyDescription"),
        (EDITOR,),
        (IDENTITY,),
        frozenset({EDITOR_REASON}),
        mtls_allowed="editor",
        mtls_denied="viewer",
    ),
)


def credentials(stack: SecureStack, rule: Rule, via: Via, allowed: bool) -> Credentials:
    if via == "mtls":
        return Credentials(rule.mtls_allowed if allowed else rule.mtls_denied)
    roles = rule.allowed_roles if allowed else rule.denied_roles
    return Credentials("gateway", stack.token(f"svc-{rule.name}", roles))


def principal(credentials: Credentials, rule: Rule) -> str:
    return jwt_principal(f"svc-{rule.name}") if credentials.token else spiffe_id(credentials.client)


def jwt_principal(subject: str) -> str:
    """A token's principal: its own namespace, never a certificate's or a dev name."""
    return f"jwt:{ISSUER}#{subject}"


async def prepare(stack: SecureStack, stubs: Stubs, layout: Layout) -> None:
    """Make version 2 as the admin, so a revert to version 1 has something to undo."""
    request = update(layout.image_set_id, study({"StudyDescription": "VERSION 2"}))
    call = stubs.service("admin").UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT)
    assert_updated(await events_of(call))


async def assert_audited(
    stack: SecureStack, refused: Refusal, principal: str, image_set_id: str | None = None
) -> None:
    """The denial left one audit record: its decision id, the caller's principal, denied.

    A refusal for holding no role reuses the (cached) role decision that found none, so several
    requests may name one decision id: give `image_set_id` to tell them apart.
    """

    async def audited() -> None:
        lines = stack.audit_path.read_text().splitlines()
        audits = [json.loads(line) for line in lines]
        audits = [a for a in audits if a["event"] == "decision"]
        matching = [
            a
            for a in audits
            if a.get("decision_id") == refused.decision_id
            and image_set_id in (None, a.get("image_set_id"))
        ]
        assert len(matching) == 1, f"no audit line for decision {refused.decision_id}"
        assert matching[0]["principal"] == principal
        assert matching[0]["outcome"] == "denied"

    await eventually(audited)


@pytest.mark.parametrize("via", ["mtls", "jwt"])
@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
async def test_rule_allows_a_caller_holding_its_roles(
    secure_stack: SecureStack, stubs: Stubs, rule: Rule, via: Via
) -> None:
    layout = secure_stack.layout(secure_stack.take_image_set())
    if rule.prepared:
        await prepare(secure_stack, stubs, layout)
    caller = credentials(secure_stack, rule, via, allowed=True)

    call = stubs.service(caller.client).UpdateImageSetMetadata(
        rule.build(layout), metadata=caller.metadata(), timeout=RPC_TIMEOUT
    )

    assert_updated(await events_of(call))
    assert len(secure_stack.update_calls(layout.image_set_id)) == 1 + rule.prepared


@pytest.mark.parametrize("via", ["mtls", "jwt"])
@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
async def test_rule_denies_a_caller_without_its_roles(
    secure_stack: SecureStack, stubs: Stubs, rule: Rule, via: Via
) -> None:
    layout = secure_stack.layout(secure_stack.take_image_set())
    caller = credentials(secure_stack, rule, via, allowed=False)

    refused = await refusal(
        stubs.service(caller.client).UpdateImageSetMetadata(
            rule.build(layout), metadata=caller.metadata(), timeout=RPC_TIMEOUT
        )
    )

    if via == "mtls" and caller.client in NO_ROLE_CLIENTS:
        assert_denied(refused, {NO_ROLE})  # refused by the gate, before the policy saw the update
    else:
        assert_denied(refused, rule.reasons)
    if via == "jwt":
        assert refused.reasons == rule.reasons
    assert secure_stack.update_calls(layout.image_set_id) == []
    await assert_audited(secure_stack, refused, principal(caller, rule), layout.image_set_id)


# --- per-datastore grants ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "roles"),
    [("svc-scoped", [f"{EDITOR}@{DATASTORE_ID}"]), (GRANTED_SUBJECT, [])],
    ids=["jwt_role_scoped_to_this_datastore", "data_grant_for_this_datastore"],
)
async def test_datastore_grant_allows_in_its_datastore(
    secure_stack: SecureStack, stubs: Stubs, subject: str, roles: list[str]
) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, study({"StudyDescription": "SCOPED"}))
    metadata = Credentials("gateway", secure_stack.token(subject, roles)).metadata()

    events = await events_of(
        stubs.service("gateway").UpdateImageSetMetadata(
            request, metadata=metadata, timeout=RPC_TIMEOUT
        )
    )

    assert_updated(events)


@pytest.mark.parametrize(
    ("subject", "roles", "datastore_id"),
    [
        ("svc-scoped", [f"{EDITOR}@{OTHER_DATASTORE_ID}"], DATASTORE_ID),
        ("svc-scoped", [f"{EDITOR}@{DATASTORE_ID}"], OTHER_DATASTORE_ID),
        (GRANTED_SUBJECT, [], OTHER_DATASTORE_ID),
    ],
    ids=["jwt_role_scoped_elsewhere", "jwt_role_used_elsewhere", "data_grant_used_elsewhere"],
)
async def test_datastore_grant_denies_in_another_datastore(
    secure_stack: SecureStack, stubs: Stubs, subject: str, roles: list[str], datastore_id: str
) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, study({"StudyDescription": "X"}), datastore_id=datastore_id)
    metadata = Credentials("gateway", secure_stack.token(subject, roles)).metadata()

    refused = await refusal(
        stubs.service("gateway").UpdateImageSetMetadata(
            request, metadata=metadata, timeout=RPC_TIMEOUT
        )
    )

    assert_denied(refused)
    assert refused.reasons == {NO_ROLE}
    assert not [r for r in secure_stack.requests() if r["imageSetId"] == image_set]


async def test_spiffe_grants_under_star_hold_in_every_datastore(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    request = update("a" * 32, study({"StudyDescription": "X"}), datastore_id=OTHER_DATASTORE_ID)

    evaluation = await stubs.service("editor").EvaluateUpdate(request, timeout=RPC_TIMEOUT)

    assert evaluation.decision.allow
    assert evaluation.decision.decision_id


# --- unknown principals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caller",
    [
        Credentials("stranger"),
        Credentials("viewer"),
        Credentials("gateway"),
    ],
    ids=["unknown_spiffe_id", "known_spiffe_id_without_roles", "gateway_certificate_alone"],
)
async def test_certificate_principal_without_grants_is_denied(
    secure_stack: SecureStack, stubs: Stubs, caller: Credentials
) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, study({"StudyDescription": "X"}))

    refused = await refusal(
        stubs.service(caller.client).UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT)
    )

    assert_denied(refused)
    assert refused.reasons == {NO_ROLE}  # the gate: refused before the document is read
    assert secure_stack.update_calls(image_set) == []
    await assert_audited(secure_stack, refused, spiffe_id(caller.client), image_set)


@pytest.mark.parametrize(
    "roles",
    [
        [],
        ["superuser", "root", "metadata-admin@", "@metadata-admin"],
        [f"{ADMIN}@{DATASTORE_ID}@x"],
    ],
    ids=["no_roles", "unknown_role_names", "malformed_scope"],
)
async def test_token_principal_without_known_roles_is_denied(
    secure_stack: SecureStack, stubs: Stubs, roles: list[str]
) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, study({"StudyDescription": "X"}))
    metadata = Credentials("gateway", secure_stack.token("nobody", roles)).metadata()

    refused = await refusal(
        stubs.service("gateway").UpdateImageSetMetadata(
            request, metadata=metadata, timeout=RPC_TIMEOUT
        )
    )

    assert_denied(refused)
    assert refused.reasons == {NO_ROLE}
    assert secure_stack.update_calls(image_set) == []
    await assert_audited(secure_stack, refused, jwt_principal("nobody"), image_set)


# --- principal namespaces: a token cannot take another identity source's grants -----------------


@pytest.mark.parametrize("client", ["gateway", "admin"], ids=["gateway_cert", "admin_cert"])
@pytest.mark.parametrize(
    "subject",
    [spiffe_id("admin"), spiffe_id("editor"), "demo-admin", "dev:demo-admin", "demo-editor"],
)
async def test_a_token_named_like_a_granted_principal_gets_no_grants(
    secure_stack: SecureStack, stubs: Stubs, subject: str, client: str
) -> None:
    """The token names the caller (even over the admin's own certificate): jwt:<iss>#<sub>."""
    # Ids no image set has: the gate refuses before any backend call, and any call would show
    # in the emulator's request log under these ids (no seeded image set is used up).
    evaluated, updated = uuid.uuid4().hex, uuid.uuid4().hex
    metadata = Credentials(client, secure_stack.token(subject)).metadata()
    stub = stubs.service(client)

    request = functools.partial(update, updatable=study({"StudyDescription": "TAKEN OVER"}))
    denials = [
        await refusal(
            stub.EvaluateUpdate(request(evaluated), metadata=metadata, timeout=RPC_TIMEOUT)
        ),
        await refusal(
            stub.UpdateImageSetMetadata(request(updated), metadata=metadata, timeout=RPC_TIMEOUT)
        ),
    ]

    for denial, image_set in zip(denials, (evaluated, updated), strict=True):
        assert_denied(denial)
        assert denial.reasons == {NO_ROLE}
        assert not [r for r in secure_stack.requests() if r.get("imageSetId") == image_set]
        await assert_audited(secure_stack, denial, jwt_principal(subject), image_set)
