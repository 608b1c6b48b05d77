"""Issue 7, hostile input: spellings, hiding places, empty objects, sizes, tokens and certificates.

Every request here must be refused (INVALID_ARGUMENT before the policy, PERMISSION_DENIED from it,
UNAUTHENTICATED, or refused by gRPC itself) and none may reach the emulator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.secure_stack import (
    RPC_TIMEOUT,
    Credentials,
    Layout,
    Proxy,
    SecureStack,
    bearer,
    open_mtls_channel,
    open_tls_channel,
    service_stub,
    spiffe_id,
)
from tests.e2e.security.calls import (
    Refusal,
    Stubs,
    assert_denied,
    instance,
    refusal,
    revert,
    series,
    study,
    update,
)
from tests.support.pki import (
    AUDIENCE,
    ISSUER,
    generate_signing_key,
    make_token,
    standard_claims,
)
from tests.support.tokens import forge_hs256_token, make_unsigned_token

pytestmark = pytest.mark.e2e

ADMIN, EDITOR = "metadata-admin", "metadata-editor"
PRIVATE, IDENTITY = "private-tag-editor", "patient-identity-editor"
ALL_ROLES = (ADMIN, EDITOR, PRIVATE, IDENTITY)
NO_CHANGES = "dicom update lists no changes"
REFUSED_BEFORE_BACKEND = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}

# --- one protected attribute, every spelling, every hiding place ---------------------------------

Place = Literal[
    "patient", "study", "series", "instance", "instance_vrs_only", "instance_with_vrs",
    "in_sequence_at_study", "in_sequence_at_series", "in_sequence_at_instance",
]  # fmt: skip
PLACES: tuple[Place, ...] = get_args(Place)
SEQUENCE = "ReferencedImageSequence"  # no HealthImaging level: allowed anywhere, hides its items


@dataclass(frozen=True)
class Protected:
    """A class of protected attributes, the spellings to try and who lacks the role it needs."""

    name: str
    spellings: dict[str, tuple[str, ...]]  # attribute → its spellings
    vrs: dict[str, str]
    roles: tuple[str, ...]
    reason: str
    nested_reason: str = ""
    """The reason when the attribute hides in a sequence item, if not `reason`."""

    def expected(self, place: Place) -> str:
        return self.nested_reason if self.nested_reason and "sequence" in place else self.reason


PROTECTED = (
    Protected(
        "patient_identity",
        {
            "PatientName": ("PatientName", "00100010"),
            "PatientAddress": ("PatientAddress", "00101040"),
            "OtherPatientIDs": ("OtherPatientIDs", "00101000"),
        },
        {"PatientName": "PN", "PatientAddress": "LO", "OtherPatientIDs": "LO"},
        (ADMIN, EDITOR, PRIVATE),
        "patient identity changes require role patient-identity-editor",
    ),
    Protected(
        "uid",
        {
            "StudyInstanceUID": ("StudyInstanceUID", "0020000D", "0020000d"),
            "SeriesInstanceUID": ("SeriesInstanceUID", "0020000E", "0020000e"),
            "SOPInstanceUID": ("SOPInstanceUID", "00080018"),
            "StudyID": ("StudyID", "00200010"),
        },
        {
            "StudyInstanceUID": "UI",
            "SeriesInstanceUID": "UI",
            "SOPInstanceUID": "UI",
            "StudyID": "SH",
        },
        (EDITOR, PRIVATE, IDENTITY),
        "UID changes require role metadata-admin",
        # A UID inside a sequence item references another object; it is not this image set's
        # identity, so it is not classified "uid". The sequence around it needs force (admin).
        nested_reason="force requires role metadata-admin",
    ),
    Protected(
        "private",
        {
            "0019100A": ("0019100A", "0019100a"),
            "0009ABCD": ("0009ABCD", "0009abcd"),
            "00190010": ("00190010",),  # a private creator is private too
        },
        {"0019100A": "LO", "0009ABCD": "LO", "00190010": "LO"},
        (ADMIN, EDITOR, IDENTITY),
        "private tag changes require role private-tag-editor",
    ),
)


def hide(layout: Layout, place: Place, key: str, vr: str) -> dict[str, Any]:
    """A document touching attribute `key` at `place`."""
    value: Any = "1.2.3" if vr == "UI" else "HOSTILE"
    sop = layout.series[layout.pair_series][0]
    at_instance = {
        "instance": {"DICOM": {key: value}},
        "instance_vrs_only": {"DICOMVRs": {key: vr}},
        "instance_with_vrs": {"DICOM": {key: value}, "DICOMVRs": {key: vr}},
        "in_sequence_at_instance": {"DICOM": {SEQUENCE: [{key: value}]}},
    }
    if place in at_instance:
        return instance(layout.pair_series, sop, at_instance[place])
    if place == "patient":
        return {"Patient": {"DICOM": {key: value}}}
    if place in ("series", "in_sequence_at_series"):
        attributes = {key: value} if place == "series" else {SEQUENCE: [{key: value}]}
        return series(layout.pair_series, {"DICOM": attributes})
    return study({key: value} if place == "study" else {SEQUENCE: [{key: value}]})


@dataclass(frozen=True)
class Variant:
    attribute: str
    spelling: str
    place: Place
    document: Literal["updatable", "removable"]

    def request(self, layout: Layout, vr: str) -> pb.UpdateImageSetMetadataRequest:
        body = hide(layout, self.place, self.spelling, vr)
        if self.document == "updatable":
            return update(layout.image_set_id, body, force=True)
        return update(layout.image_set_id, removable=body, force=True)

    @property
    def same_attribute_and_place(self) -> tuple[str, str, str]:
        return (self.attribute, self.place, self.document)


def variants(protected: Protected) -> Iterator[Variant]:
    for attribute, spellings in protected.spellings.items():
        for spelling in spellings:
            for place in PLACES:
                yield Variant(attribute, spelling, place, "updatable")
                yield Variant(attribute, spelling, place, "removable")


async def outcome(stub: pb_grpc.MetadataUpdateServiceAsyncStub, request: Any, metadata: Any) -> str:
    """How EvaluateUpdate classified a request: refused as invalid, or the decision and changes."""
    try:
        evaluation = await stub.EvaluateUpdate(request, metadata=metadata, timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        return "INVALID_ARGUMENT"
    changes = sorted(
        (c.action, c.level, c.tag, tuple(c.categories), c.private) for c in evaluation.changes
    )
    return json.dumps([evaluation.decision.allow, sorted(evaluation.decision.reasons), changes])


@pytest.mark.parametrize("protected", PROTECTED, ids=lambda p: p.name)
async def test_protected_attribute_is_refused_however_spelled_and_wherever_hidden(
    secure_stack: SecureStack, stubs: Stubs, protected: Protected
) -> None:
    layout = secure_stack.layout(secure_stack.take_image_set())
    caller = Credentials("gateway", secure_stack.token("svc-hostile", protected.roles))
    stub = stubs.service(caller.client)
    seen: dict[tuple[str, str, str], set[str]] = {}
    judged_by_policy = 0

    for variant in variants(protected):
        request = variant.request(layout, protected.vrs[variant.attribute])
        seen.setdefault(variant.same_attribute_and_place, set()).add(
            await outcome(stub, request, caller.metadata())
        )
        refused = await refusal(
            stub.UpdateImageSetMetadata(request, metadata=caller.metadata(), timeout=RPC_TIMEOUT)
        )
        assert refused.code in REFUSED_BEFORE_BACKEND, (variant, refused)
        if refused.code == grpc.StatusCode.PERMISSION_DENIED:
            assert protected.expected(variant.place) in refused.reasons, (variant, refused.reasons)
            judged_by_policy += 1

    inconsistent = {place: found for place, found in seen.items() if len(found) > 1}
    assert not inconsistent, "spellings of one attribute classified differently"
    assert judged_by_policy >= len(protected.spellings), "the policy saw none of the variants"
    assert secure_stack.update_calls(layout.image_set_id) == []


# --- empty objects, revert and include_study_image_sets ------------------------------------------


def no_change_documents(layout: Layout) -> list[dict[str, Any]]:
    """Documents that name nothing to change; each is judged by the policy as an empty update."""
    return [
        {"SchemaVersion": 1.1},
        {"Patient": {}},
        {"Patient": {"DICOM": {}}},
        {"Study": {}},
        {"Study": {"DICOM": {}, "Series": {}}},
        series(layout.pair_series, {"Instances": {}}),
        instance(layout.pair_series, layout.series[layout.pair_series][0], {"DICOM": {}}),
    ]


async def test_documents_that_change_nothing_are_denied_even_to_an_admin(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    layout = secure_stack.layout(secure_stack.take_image_set())
    documents = no_change_documents(layout)
    requests = [update(layout.image_set_id, document) for document in documents]
    requests += [update(layout.image_set_id, removable=document) for document in documents]
    # An empty series in updatableAttributes removes nothing: it is not a removal either.
    requests.append(update(layout.image_set_id, series(layout.single_series, {})))

    for request in requests:
        refused = await refusal(
            stubs.service("admin").UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT)
        )
        assert_denied(refused, {NO_CHANGES})

    assert secure_stack.update_calls(layout.image_set_id) == []


async def test_removal_by_empty_object_needs_an_admin(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    layout = secure_stack.layout(secure_stack.take_image_set())
    pair = layout.series[layout.pair_series]
    caller = Credentials("gateway", secure_stack.token("svc-remover", (EDITOR, PRIVATE, IDENTITY)))
    removals = [
        series(layout.single_series, {}),
        instance(layout.pair_series, pair[1], {}),
        {"Study": {"Series": {uid: {} for uid in layout.series}}},
        series(layout.pair_series, {"Instances": {sop: {} for sop in pair}}),
    ]

    for document in removals:
        request = update(layout.image_set_id, removable=document)
        refused = await refusal(
            stubs.service(caller.client).UpdateImageSetMetadata(
                request, metadata=caller.metadata(), timeout=RPC_TIMEOUT
            )
        )
        assert_denied(refused, {"removing series or instances requires role metadata-admin"})

    assert secure_stack.update_calls(layout.image_set_id) == []


async def test_revert_and_include_study_cannot_reach_what_an_editor_may_not_change(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    image_set = secure_stack.take_image_set()
    editor = Credentials("gateway", secure_stack.token("svc-editor", (EDITOR, PRIVATE, IDENTITY)))
    stub = stubs.service(editor.client)
    attempts = [
        (revert(image_set, to_version="1", version="1"), "revert requires role metadata-admin"),
        (
            update(image_set, study({"StudyDescription": "EVERY IMAGE SET"}), include_study=True),
            "include_study_image_sets requires role metadata-admin",
        ),
    ]

    for request, reason in attempts:
        refused = await refusal(
            stub.UpdateImageSetMetadata(request, metadata=editor.metadata(), timeout=RPC_TIMEOUT)
        )
        assert_denied(refused, {reason})

    assert secure_stack.update_calls(image_set) == []


@pytest.mark.parametrize(
    "request_",
    [
        revert("x" * 32, to_version="1", version="2", include_study=True),
        revert("x" * 32, to_version="", version="2"),
        revert("x" * 32, to_version="-1", version="2"),
        revert("x" * 32, to_version="1 OR 1=1", version="2"),
        revert("x" * 32, to_version="\u0661", version="2"),  # ARABIC-INDIC DIGIT ONE
        revert("x" * 32, to_version="1", version="\uff12"),  # FULLWIDTH DIGIT TWO
        pb.UpdateImageSetMetadataRequest(datastore_id="1" * 32, image_set_id="x" * 32),
    ],
    ids=[
        "revert_with_include_study",
        "empty_version",
        "negative_version",
        "injection",
        "non_ascii_digit",
        "non_ascii_latest_version",
        "neither_updates_nor_revert",
    ],
)
async def test_malformed_revert_is_invalid_even_for_an_admin(
    secure_stack: SecureStack, stubs: Stubs, request_: pb.UpdateImageSetMetadataRequest
) -> None:
    image_set = secure_stack.take_image_set()
    request = pb.UpdateImageSetMetadataRequest()
    request.CopyFrom(request_)
    request.image_set_id, request.datastore_id = image_set, "12345678901234567890123456789012"

    refused = await refusal(
        stubs.service("admin").UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT)
    )

    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.violations
    assert secure_stack.update_calls(image_set) == []


# --- sizes ---------------------------------------------------------------------------------------


def padded_study(size: int) -> bytes:
    """A valid study-level document of exactly `size` bytes."""
    document = json.dumps(study({"StudyDescription": "PADDED"})).encode()
    return document[:-1] + b" " * (size - len(document)) + b"}"  # an LO value stays short


def nested_sequence(depth: int) -> dict[str, Any]:
    value: list[dict[str, Any]] = [{"StudyDescription": "deep"}]
    for _ in range(depth):
        value = [{SEQUENCE: value}]
    return study({SEQUENCE: value})


@pytest.mark.parametrize(
    "updatable",
    [
        padded_study(10_241),
        b"[" * 25_000 + b"]" * 25_000,
        b'{"Study":' * 2_500 + b"1" + b"}" * 2_500,
        json.dumps(nested_sequence(9)).encode(),
        b'{"SchemaVersion": 1.1, "SchemaVersion": 1.1, "Study": {"DICOM": {}}}',
        b'{"Study": {"DICOM": {"StudyDescription": NaN}}}',
        b"\xef\xbb\xbf" + json.dumps(study({"StudyDescription": "BOM"})).encode(),
        json.dumps(study({"StudyDescription": "x"})).encode("utf-16"),
    ],
    ids=[
        "over_the_10240_byte_payload_quota",
        "deeply_nested_lists",
        "deeply_nested_objects",
        "sequences_nested_9_deep",
        "duplicate_keys",
        "nan",
        "utf8_bom",
        "utf16",
    ],
)
async def test_oversized_nested_or_ambiguous_documents_are_invalid(
    secure_stack: SecureStack, stubs: Stubs, updatable: bytes
) -> None:
    image_set = secure_stack.take_image_set()

    refused = await refusal(
        stubs.service("admin").UpdateImageSetMetadata(
            update(image_set, updatable, force=True), timeout=RPC_TIMEOUT
        )
    )

    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, refused
    assert refused.violations
    assert secure_stack.update_calls(image_set) == []


async def test_a_document_of_exactly_10240_bytes_reaches_the_policy(stubs: Stubs) -> None:
    evaluation = await stubs.service("admin").EvaluateUpdate(
        update("a" * 32, padded_study(10_240)), timeout=RPC_TIMEOUT
    )

    assert evaluation.decision.allow


async def test_a_message_over_the_servers_limit_is_refused_by_grpc(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, padded_study(20_000), removable=b" " * (300 * 1024))

    refused = await refusal(
        stubs.service("admin").UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT)
    )

    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert secure_stack.update_calls(image_set) == []


async def test_oversized_metadata_is_refused(secure_stack: SecureStack, stubs: Stubs) -> None:
    image_set = secure_stack.take_image_set()
    token = secure_stack.token("svc-big", ALL_ROLES, padding="p" * 40_000)

    refused = await refusal(
        stubs.service("gateway").UpdateImageSetMetadata(
            update(image_set, study({"StudyDescription": "X"})),
            metadata=bearer(token),
            timeout=RPC_TIMEOUT,
        )
    )

    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert secure_stack.update_calls(image_set) == []


# --- tokens --------------------------------------------------------------------------------------


def hostile_tokens(stack: SecureStack) -> dict[str, str]:
    """Tokens that claim every role; none of them verifies."""
    claims = standard_claims("svc-intruder", ALL_ROLES)
    now = int(time.time())
    untrusted = generate_signing_key(stack.directory / "jwt", "RS256", "rsa-1")
    rsa_public = stack.keys.rsa.public_pem.read_bytes()
    return {
        "expired": stack.token(
            "svc-intruder", ALL_ROLES, iat=now - 900, nbf=now - 900, exp=now - 600
        ),
        "not_yet_valid": stack.token("svc-intruder", ALL_ROLES, nbf=now + 600),
        "signed_by_an_untrusted_key": make_token(untrusted, claims),
        "alg_none": make_unsigned_token(claims),
        "hs256_with_the_public_key": forge_hs256_token(rsa_public, claims, kid="rsa-1"),
        "wrong_issuer": stack.token("svc-intruder", ALL_ROLES, iss=ISSUER + ".evil"),
        "wrong_audience": stack.token("svc-intruder", ALL_ROLES, aud=AUDIENCE + "-other"),
        "roles_as_a_string": make_token(stack.keys.rsa, {**claims, "roles": ADMIN}),
        "no_expiry": make_token(stack.keys.rsa, {k: v for k, v in claims.items() if k != "exp"}),
        "tampered_payload": _tampered(stack),
        "not_a_jwt": "not.a.jwt",
    }


def _tampered(stack: SecureStack) -> str:
    """A valid token for a powerless subject whose payload was swapped for an admin's."""
    header, _, signature = stack.token("svc-nobody", ()).split(".")
    payload = make_token(stack.keys.rsa, standard_claims("svc-intruder", ALL_ROLES)).split(".")[1]
    return f"{header}.{payload}.{signature}"


TOKEN_CASES = (
    "expired",
    "not_yet_valid",
    "signed_by_an_untrusted_key",
    "alg_none",
    "hs256_with_the_public_key",
    "wrong_issuer",
    "wrong_audience",
    "roles_as_a_string",
    "no_expiry",
    "tampered_payload",
    "not_a_jwt",
)


def assert_unauthenticated(refused: Refusal, token: str = "") -> None:
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED, refused
    assert refused.info is not None and refused.info.reason == "UNAUTHENTICATED"
    assert not token or token not in refused.message


@pytest.fixture(scope="module")
def tokens(secure_stack: SecureStack) -> dict[str, str]:
    return hostile_tokens(secure_stack)


@pytest.mark.parametrize("case", TOKEN_CASES)
async def test_bad_token_is_refused_even_over_the_admins_certificate(
    secure_stack: SecureStack, stubs: Stubs, tokens: dict[str, str], case: str
) -> None:
    image_set = secure_stack.take_image_set()
    token = tokens[case]

    refused = await refusal(
        stubs.service("admin").UpdateImageSetMetadata(
            update(image_set, study({"StudyDescription": "X"})),
            metadata=bearer(token),
            timeout=RPC_TIMEOUT,
        )
    )

    assert_unauthenticated(refused, token)
    assert secure_stack.update_calls(image_set) == []


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Basic YWRtaW46YWRtaW4="),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer x"), ("authorization", "Bearer y")),
        (("x-dev-principal", "demo-admin"),),
        (("x-dev-principal", spiffe_id("admin")),),
    ],
    ids=["none", "basic", "empty_bearer", "two_tokens", "dev_principal", "dev_spiffe_principal"],
)
async def test_missing_or_malformed_credentials_are_unauthenticated_on_the_jwt_listener(
    secure_stack: SecureStack, jwt_listener: Proxy, metadata: tuple[tuple[str, str], ...]
) -> None:
    image_set = secure_stack.take_image_set()
    async with open_tls_channel(secure_stack, jwt_listener.endpoint) as channel:
        stub = service_stub(channel)
        refused = await refusal(
            stub.UpdateImageSetMetadata(
                update(image_set, study({"StudyDescription": "X"})),
                metadata=metadata,
                timeout=RPC_TIMEOUT,
            )
        )

    assert_unauthenticated(refused)
    assert secure_stack.update_calls(image_set) == []


async def test_dev_principal_is_ignored_by_a_server_without_dev_identity(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    image_set = secure_stack.take_image_set()

    refused = await refusal(
        stubs.service("gateway").UpdateImageSetMetadata(
            update(image_set, study({"StudyDescription": "X"})),
            metadata=(("x-dev-principal", "demo-admin"),),
            timeout=RPC_TIMEOUT,
        )
    )

    assert_denied(refused, {"caller holds no role on this datastore"})
    assert secure_stack.update_calls(image_set) == []


@pytest.mark.parametrize("client", ["foreign", None], ids=["foreign_ca", "no_certificate"])
async def test_connection_without_a_trusted_client_certificate_is_refused_in_the_handshake(
    secure_stack: SecureStack, client: str | None
) -> None:
    image_set = secure_stack.take_image_set()
    channel = (
        open_mtls_channel(secure_stack, client)
        if client
        else open_tls_channel(secure_stack, secure_stack.endpoint)
    )
    async with channel:
        stub = service_stub(channel)
        refused = await refusal(
            stub.UpdateImageSetMetadata(
                update(image_set, study({"StudyDescription": "X"})),
                metadata=bearer(secure_stack.token("svc-admin", ALL_ROLES)),
                timeout=RPC_TIMEOUT,
            )
        )

    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert secure_stack.update_calls(image_set) == []
