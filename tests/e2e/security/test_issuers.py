"""Issue 18, part 3: JWT keys bound to their issuers, over a real `serve` with two providers.

The proxy trusts provider A (the test issuer, whose `svc-reporting` is granted metadata-editor in
policies/data.json) and provider B, each from its own `[[identity.jwt_issuers]]` table with its
own JWKS. B's key cannot sign for A's users, and no token lives for ever.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from devstack.settings import merged
from tests.e2e.secure_stack import (
    RPC_TIMEOUT,
    TEST_SETTINGS,
    Proxy,
    SecureStack,
    backend_args,
    bearer,
    open_tls_channel,
    service_stub,
    start_proxy,
)
from tests.e2e.security.calls import assert_denied, refusal, study, update
from tests.support.pki import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    generate_signing_key,
    make_token,
    standard_claims,
    write_jwks,
)

pytestmark = pytest.mark.e2e

ISSUER_B = "https://idp-b.example"
REPORTING = "svc-reporting"
"""A's subject with a grant (metadata-editor) in policies/data.json."""


@pytest.fixture(scope="module")
def provider_b(secure_stack: SecureStack) -> SigningKey:
    directory = secure_stack.directory / "idp-b"
    directory.mkdir(exist_ok=True)
    key = generate_signing_key(directory, "RS256", secure_stack.keys.rsa.kid)  # A's kid, too
    write_jwks(directory / "jwks.json", [key])
    return key


@pytest.fixture(scope="module")
def two_providers(secure_stack: SecureStack, provider_b: SigningKey) -> Iterator[Proxy]:
    """`serve` with server-only TLS and two `[[identity.jwt_issuers]]` tables."""
    issuers = [
        {"issuer": ISSUER, "jwks_file": str(secure_stack.keys.jwks_file), "audiences": [AUDIENCE]},
        {
            "issuer": ISSUER_B,
            "jwks_file": str(provider_b.public_pem.parent / "jwks.json"),
            "audiences": [AUDIENCE],
        },
    ]
    pki = secure_stack.pki
    tls = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    proxy = start_proxy(
        secure_stack.directory / "two-providers",
        [*tls, *backend_args(secure_stack.backend)],
        merged(TEST_SETTINGS, {"identity": {"jwt_issuers": issuers}}),
    )
    yield proxy
    proxy.child.stop()


async def test_provider_b_cannot_pose_as_provider_a(
    secure_stack: SecureStack, two_providers: Proxy, provider_b: SigningKey
) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, study({"StudyDescription": "IMPERSONATED"}))
    forged = make_token(provider_b, standard_claims(REPORTING, issuer=ISSUER))
    forever = make_token(secure_stack.keys.rsa, standard_claims(REPORTING) | {"exp": 1e20})
    b_own = make_token(provider_b, standard_claims(REPORTING, issuer=ISSUER_B))
    a_own = make_token(secure_stack.keys.rsa, standard_claims(REPORTING))

    async with open_tls_channel(secure_stack, two_providers.endpoint) as channel:
        stub = service_stub(channel)
        refused = {
            name: await refusal(
                stub.UpdateImageSetMetadata(request, metadata=bearer(token), timeout=RPC_TIMEOUT)
            )
            for name, token in (("forged", forged), ("forever", forever), ("b_own", b_own))
        }
        allowed = await stub.EvaluateUpdate(request, metadata=bearer(a_own), timeout=RPC_TIMEOUT)

    assert refused["forged"].code == grpc.StatusCode.UNAUTHENTICATED
    assert "'iss' is not the issuer of the key that signed it" in refused["forged"].message
    assert refused["forever"].code == grpc.StatusCode.UNAUTHENTICATED
    assert "maximum" in refused["forever"].message
    # B's own token verifies, as B's principal: a namespace A's grants do not reach.
    assert refused["b_own"].code == grpc.StatusCode.PERMISSION_DENIED
    assert_denied(refused["b_own"])
    assert allowed.decision.allow  # the same subject from A holds A's grant
    assert secure_stack.update_calls(image_set) == []
    audited = {r.get("principal") for r in two_providers.audit_records() if image_set in str(r)}
    assert f"jwt:{ISSUER_B}#{REPORTING}" in audited
