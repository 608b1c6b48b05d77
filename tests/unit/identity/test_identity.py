"""Unit tests of caller identity: JWT verification, SPIFFE/CN rules, dev identity, configuration."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from service.core.config import IdentitySettings, JwtIssuerSettings
from service.core.errors import Unauthenticated
from service.core.model import Caller
from service.identity.callers import AuthContext, Authenticator
from service.transport.tls import ListenerFiles, load_configuration, server_credentials
from tests.support.pki import (
    ADMIN_SPIFFE_ID,
    AUDIENCE,
    ISSUER,
    JwtKeys,
    Pki,
    SigningKey,
    generate_signing_key,
    identity_settings,
    make_token,
    standard_claims,
    write_jwks,
    write_jwt_keys,
    write_pki,
)
from tests.support.tokens import forge_hs256_token, make_unsigned_token

SVC = f"jwt:{ISSUER}#svc"
"""The principal of a token from the test issuer whose subject is "svc"."""
SPIFFE_CONTEXT: AuthContext = {
    "transport_security_type": [b"ssl"],
    "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----..."],
    "x509_common_name": [b"imaging-admin"],
    "peer_uri": [ADMIN_SPIFFE_ID.encode()],
    "peer_spiffe_id": [ADMIN_SPIFFE_ID.encode()],
}
CN_CONTEXT: AuthContext = {
    "transport_security_type": [b"ssl"],
    "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----..."],
    "x509_common_name": [b"legacy-service"],
}
NO_CERT_CONTEXT: AuthContext = {"transport_security_type": [b"ssl"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> JwtKeys:
    return write_jwt_keys(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def settings(pki: Pki, keys: JwtKeys) -> IdentitySettings:
    return identity_settings(pki, keys)


@pytest.fixture(scope="module")
def auth(settings: IdentitySettings) -> Authenticator:
    return Authenticator.from_settings(settings)


def flat(**settings: Any) -> IdentitySettings:
    """One issuer in the flat form: the test issuer and audience, with the given keys."""
    return IdentitySettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, **settings)


def bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [("authorization", f"Bearer {token}")]


def refusal(auth: Authenticator, token: str, context: AuthContext = NO_CERT_CONTEXT) -> str:
    """The Unauthenticated message for `token`, checked never to echo the token."""
    with pytest.raises(Unauthenticated) as raised:
        auth.authenticate(bearer(token), context)
    assert token not in raised.value.message
    return raised.value.message


# --- JWT: accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["rsa", "ec"])
def test_valid_token_identifies_caller(auth: Authenticator, keys: JwtKeys, key_name: str) -> None:
    key = getattr(keys, key_name)
    claims = standard_claims("svc-reporting", roles=["admin", "private-tags"])
    caller = auth.authenticate(bearer(make_token(key, claims)), NO_CERT_CONTEXT)
    principal = f"jwt:{ISSUER}#svc-reporting"
    assert caller == Caller(principal, "jwt", ("admin", "private-tags"), claims)
    json.dumps(caller.claims)  # JSON-able for the policy input


def test_pem_public_keys_verify_tokens_with_any_kid(keys: JwtKeys) -> None:
    auth = Authenticator.from_settings(
        flat(jwt_public_keys=(str(keys.rsa.public_pem), str(keys.ec.public_pem)))
    )
    for key, headers in ((keys.rsa, {"kid": "idp-2024"}), (keys.ec, {})):
        token = make_token(key, standard_claims("svc"), headers=headers)
        assert auth.authenticate(bearer(token), {}).principal == SVC


def test_token_without_kid_is_tried_against_every_key(auth: Authenticator, keys: JwtKeys) -> None:
    token = make_token(keys.ec, standard_claims("svc"), headers={"kid": None})
    assert auth.authenticate(bearer(token), {}).principal == SVC


def test_expiry_within_leeway_is_accepted(auth: Authenticator, keys: JwtKeys) -> None:
    claims = standard_claims("svc") | {"exp": int(time.time()) - 5}  # leeway is 30 s
    assert auth.authenticate(bearer(make_token(keys.rsa, claims)), {}).principal == SVC


def test_missing_roles_claim_means_no_roles(auth: Authenticator, keys: JwtKeys) -> None:
    claims = standard_claims("svc")
    del claims["roles"]
    assert auth.authenticate(bearer(make_token(keys.rsa, claims)), {}).roles == ()


def test_custom_principal_and_roles_claims(settings: IdentitySettings, keys: JwtKeys) -> None:
    custom = dataclasses.replace(settings, jwt_principal_claim="azp", jwt_roles_claim="groups")
    claims = standard_claims("ignored") | {"azp": "svc-pacs", "groups": ["imaging-admin"]}
    caller = Authenticator.from_settings(custom).authenticate(
        bearer(make_token(keys.ec, claims)), {}
    )
    assert (caller.principal, caller.roles) == (f"jwt:{ISSUER}#svc-pacs", ("imaging-admin",))


def test_bearer_scheme_is_case_insensitive(auth: Authenticator, keys: JwtKeys) -> None:
    token = make_token(keys.rsa, standard_claims("svc"))
    assert auth.authenticate([("authorization", f"bearer {token}")], {}).principal == SVC


# --- JWT: refused ----------------------------------------------------------------------------


def test_expired_token(auth: Authenticator, keys: JwtKeys) -> None:
    claims = standard_claims("svc") | {"exp": int(time.time()) - 3600}
    assert "expired" in refusal(auth, make_token(keys.rsa, claims))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_not_valid_yet(auth: Authenticator, keys: JwtKeys, claim: str) -> None:
    claims = standard_claims("svc") | {claim: int(time.time()) + 3600}
    assert "not valid yet" in refusal(auth, make_token(keys.ec, claims))


def test_wrong_issuer(auth: Authenticator, keys: JwtKeys) -> None:
    claims = standard_claims("svc", issuer="https://evil.example")
    assert "issuer" in refusal(auth, make_token(keys.rsa, claims))


def test_wrong_audience(auth: Authenticator, keys: JwtKeys) -> None:
    claims = standard_claims("svc", audience="another-service")
    assert "audience" in refusal(auth, make_token(keys.rsa, claims))


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_required_claims(auth: Authenticator, keys: JwtKeys, claim: str) -> None:
    claims = standard_claims("svc")
    del claims[claim]
    assert f"'{claim}'" in refusal(auth, make_token(keys.rsa, claims))


@pytest.mark.parametrize("audiences", [(), ("",)])
def test_an_issuer_needs_audiences(keys: JwtKeys, audiences: tuple[str, ...]) -> None:
    issuer = JwtIssuerSettings(ISSUER, jwks_file=str(keys.jwks_file), audiences=audiences)
    with pytest.raises(ValueError, match="set its audiences"):
        Authenticator.from_settings(IdentitySettings(jwt_issuers=(issuer,)))


def test_one_of_several_audiences_is_enough(keys: JwtKeys) -> None:
    issuer = JwtIssuerSettings(
        ISSUER, jwks_file=str(keys.jwks_file), audiences=("imaging-proxy-eu", AUDIENCE)
    )
    auth = Authenticator.from_settings(IdentitySettings(jwt_issuers=(issuer,)))
    assert auth.authenticate(bearer(make_token(keys.rsa, standard_claims("svc"))), {})
    assert "audience" in refusal(auth, make_token(keys.rsa, standard_claims("svc", audience="x")))


def test_untrusted_key_with_a_known_kid(auth: Authenticator, tmp_path: Path) -> None:
    impostor = generate_signing_key(tmp_path, "RS256", "rsa-1")
    message = refusal(auth, make_token(impostor, standard_claims("svc")))
    assert "signature" in message


def test_unknown_kid(auth: Authenticator, tmp_path: Path) -> None:
    stranger = generate_signing_key(tmp_path, "ES256", "somebody-else")
    assert "unknown key" in refusal(auth, make_token(stranger, standard_claims("svc")))


def test_kid_of_a_key_with_another_algorithm(auth: Authenticator, keys: JwtKeys) -> None:
    token = make_token(keys.ec, standard_claims("svc"), headers={"kid": keys.rsa.kid})
    assert "unknown key" in refusal(auth, token)


def test_alg_none_is_refused(auth: Authenticator) -> None:
    assert "algorithm" in refusal(auth, make_unsigned_token(standard_claims("svc")))


@pytest.mark.parametrize("kid", ["rsa-1", ""])
def test_hs256_signed_with_the_public_key_is_refused(
    auth: Authenticator, keys: JwtKeys, kid: str
) -> None:
    token = forge_hs256_token(keys.rsa.public_pem.read_bytes(), standard_claims("svc"), kid=kid)
    assert "algorithm" in refusal(auth, token)


def test_pem_configured_keys_refuse_hs256_too(keys: JwtKeys) -> None:
    auth = Authenticator.from_settings(flat(jwt_public_keys=(str(keys.rsa.public_pem),)))
    token = forge_hs256_token(keys.rsa.public_pem.read_bytes(), standard_claims("svc"))
    assert "algorithm" in refusal(auth, token)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "malformed"),
        ("a.b.c", "malformed"),
        ("eyJhbGciOiJSUzI1NiJ9.e30", "malformed"),  # two segments
        ("eyJhbGciOiJSUzI1NiJ9.e30.e30", "signature"),  # RS256 header, junk signature
        ("e30.e30.e30", "algorithm"),  # header without alg
    ],
)
def test_malformed_token(auth: Authenticator, token: str, message: str) -> None:
    assert message in refusal(auth, token)


def test_tampered_payload(auth: Authenticator, keys: JwtKeys) -> None:
    header, _, signature = make_token(keys.rsa, standard_claims("svc")).split(".")
    forged = make_token(keys.rsa, standard_claims("admin")).split(".")[1]
    assert "signature" in refusal(auth, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("roles", ["admin", ["admin", 7], {"admin": True}, None])
def test_malformed_roles_claim(auth: Authenticator, keys: JwtKeys, roles: object) -> None:
    claims = standard_claims("svc") | {"roles": roles}
    assert "'roles' claim must be a list of strings" in refusal(auth, make_token(keys.rsa, claims))


@pytest.mark.parametrize("subject", ["", None])
def test_missing_or_empty_principal(auth: Authenticator, keys: JwtKeys, subject: object) -> None:
    claims = standard_claims("svc") | {"sub": subject}
    if subject is None:
        del claims["sub"]
    assert "'sub'" in refusal(auth, make_token(keys.rsa, claims))


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token-without-scheme"]
)
def test_authorization_must_be_a_bearer_token(auth: Authenticator, value: str) -> None:
    with pytest.raises(Unauthenticated, match="Bearer <token>"):
        auth.authenticate([("authorization", value)], {})


def test_repeated_authorization_is_refused(auth: Authenticator, keys: JwtKeys) -> None:
    token = make_token(keys.rsa, standard_claims("svc"))
    with pytest.raises(Unauthenticated, match="at most once"):
        auth.authenticate([*bearer(token), *bearer(token)], {})


def test_missing_credentials(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated, match="no caller identity"):
        auth.authenticate([("user-agent", "grpc-python")], NO_CERT_CONTEXT)


def test_bearer_token_without_jwt_configuration(pki: Pki, keys: JwtKeys) -> None:
    mtls_only = Authenticator.from_settings(_mtls_settings(pki))
    token = make_token(keys.rsa, standard_claims("svc"))
    assert "no JWT keys" in refusal(mtls_only, token, SPIFFE_CONTEXT)


# --- mTLS principal (auth context as gRPC core fills it) --------------------------------------


def test_spiffe_id_identifies_caller(auth: Authenticator) -> None:
    assert auth.authenticate([], SPIFFE_CONTEXT) == Caller(ADMIN_SPIFFE_ID, "mtls")


def test_cn_needs_the_fallback(pki: Pki) -> None:
    with pytest.raises(Unauthenticated, match="no SPIFFE ID"):
        Authenticator.from_settings(_mtls_settings(pki)).authenticate([], CN_CONTEXT)
    fallback = Authenticator.from_settings(_mtls_settings(pki, cn_fallback=True))
    assert fallback.authenticate([], CN_CONTEXT) == Caller("x509-cn:legacy-service", "mtls")


def test_non_spiffe_uri_falls_back_to_cn(pki: Pki) -> None:
    context = dict(CN_CONTEXT) | {"peer_uri": [b"https://legacy.example/svc"]}
    fallback = Authenticator.from_settings(_mtls_settings(pki, cn_fallback=True))
    assert fallback.authenticate([], context).principal == "x509-cn:legacy-service"


@pytest.mark.parametrize(
    "uris",
    [
        [b"spiffe://hospital.example/a", b"spiffe://hospital.example/b"],
        [b"spiffe://Hospital.Example/a"],
        [b"spiffe://hospital.example"],
        [b"spiffe://hospital.example/ns/../admin"],
    ],
)
def test_ambiguous_or_invalid_spiffe_ids_are_refused_even_with_fallback(
    pki: Pki, uris: list[bytes]
) -> None:
    context = dict(CN_CONTEXT) | {"peer_uri": uris}
    if len(uris) == 1:
        context["peer_spiffe_id"] = uris  # gRPC sets it for any single spiffe:// URI SAN
    fallback = Authenticator.from_settings(_mtls_settings(pki, cn_fallback=True))
    with pytest.raises(Unauthenticated, match="exactly one valid SPIFFE ID"):
        fallback.authenticate([], context)


def test_bearer_token_takes_precedence_over_certificate(auth: Authenticator, keys: JwtKeys) -> None:
    token = make_token(keys.rsa, standard_claims("end-user"))
    assert auth.authenticate(bearer(token), SPIFFE_CONTEXT).principal == f"jwt:{ISSUER}#end-user"
    expired = make_token(keys.rsa, standard_claims("end-user") | {"exp": 1})
    assert "expired" in refusal(auth, expired, SPIFFE_CONTEXT)


# --- development identity --------------------------------------------------------------------


def test_dev_principal_is_ignored_unless_enabled(auth: Authenticator) -> None:
    metadata = [("x-dev-principal", "root")]
    with pytest.raises(Unauthenticated, match="no caller identity"):
        auth.authenticate(metadata, NO_CERT_CONTEXT)
    assert auth.authenticate(metadata, SPIFFE_CONTEXT).principal == ADMIN_SPIFFE_ID


def test_dev_principal_when_enabled(settings: IdentitySettings) -> None:
    dev = Authenticator.from_settings(dataclasses.replace(settings, insecure_dev_identity=True))
    assert dev.authenticate([("x-dev-principal", "alice")], SPIFFE_CONTEXT) == Caller(
        "dev:alice", "dev"
    )


def test_dev_mode_falls_through_to_real_sources(settings: IdentitySettings, keys: JwtKeys) -> None:
    dev = Authenticator.from_settings(dataclasses.replace(settings, insecure_dev_identity=True))
    token = make_token(keys.ec, standard_claims("svc"))
    assert dev.authenticate(bearer(token), NO_CERT_CONTEXT).auth_method == "jwt"
    assert dev.authenticate([], SPIFFE_CONTEXT).auth_method == "mtls"
    with pytest.raises(Unauthenticated, match="development mode"):
        dev.authenticate([("x-dev-principal", "")], NO_CERT_CONTEXT)


def test_dev_only_configuration() -> None:
    dev = Authenticator.from_settings(IdentitySettings(insecure_dev_identity=True))
    assert dev.authenticate([("x-dev-principal", b"bob")], {}) == Caller("dev:bob", "dev")
    with pytest.raises(Unauthenticated, match="x-dev-principal"):
        dev.authenticate([], {})


# --- principal namespaces: one per identity source -------------------------------------------

NAMES_OF_OTHER_SOURCES = [
    ADMIN_SPIFFE_ID,
    "demo-admin",
    "dev:demo-admin",
    "x509-cn:legacy-service",
    f"jwt:{ISSUER}#svc",
]


@pytest.fixture(scope="module")
def every_source(pki: Pki, keys: JwtKeys) -> Authenticator:
    """mTLS with the CN fallback, JWT and the dev header, all at once."""
    settings = dataclasses.replace(
        identity_settings(pki, keys), spiffe_cn_fallback=True, insecure_dev_identity=True
    )
    return Authenticator.from_settings(settings)


def test_each_source_names_principals_in_its_own_namespace(
    every_source: Authenticator, keys: JwtKeys
) -> None:
    token = make_token(keys.rsa, standard_claims("svc"))
    principals = {
        "mtls": every_source.authenticate([], SPIFFE_CONTEXT).principal,
        "cn": every_source.authenticate([], CN_CONTEXT).principal,
        "jwt": every_source.authenticate(bearer(token), NO_CERT_CONTEXT).principal,
        "dev": every_source.authenticate([("x-dev-principal", "demo-admin")], {}).principal,
    }
    assert principals == {
        "mtls": ADMIN_SPIFFE_ID,
        "cn": "x509-cn:legacy-service",
        "jwt": f"jwt:{ISSUER}#svc",
        "dev": "dev:demo-admin",
    }


@pytest.mark.parametrize("name", NAMES_OF_OTHER_SOURCES)
def test_a_token_cannot_take_another_sources_principal(
    every_source: Authenticator, keys: JwtKeys, name: str
) -> None:
    caller = every_source.authenticate(
        bearer(make_token(keys.ec, standard_claims(name))), NO_CERT_CONTEXT
    )
    assert caller.principal == f"jwt:{ISSUER}#{name}"
    assert caller.principal not in NAMES_OF_OTHER_SOURCES


@pytest.mark.parametrize("name", NAMES_OF_OTHER_SOURCES)
def test_the_dev_header_cannot_take_another_sources_principal(
    every_source: Authenticator, name: str
) -> None:
    caller = every_source.authenticate([("x-dev-principal", name)], SPIFFE_CONTEXT)
    assert (caller.principal, caller.auth_method) == (f"dev:{name}", "dev")


def test_a_common_name_cannot_take_a_spiffe_id(every_source: Authenticator) -> None:
    context = dict(CN_CONTEXT) | {"x509_common_name": [ADMIN_SPIFFE_ID.encode()]}
    assert every_source.authenticate([], context).principal == f"x509-cn:{ADMIN_SPIFFE_ID}"


def test_the_same_subject_from_two_issuers_is_two_principals(
    two_providers: Authenticator, keys: JwtKeys, provider_b: SigningKey
) -> None:
    principals = {
        two_providers.authenticate(
            bearer(make_token(key, standard_claims("svc", issuer=issuer))), {}
        ).principal
        for key, issuer in ((keys.rsa, ISSUER), (provider_b, ISSUER_B))
    }
    assert principals == {f"jwt:{ISSUER}#svc", f"jwt:{ISSUER_B}#svc"}


@pytest.mark.parametrize("issuer", [None, "", "https://idp.example#fragment", ["a"], 7])
def test_the_issuer_is_required_and_configured(
    two_providers: Authenticator, keys: JwtKeys, issuer: object
) -> None:
    claims = standard_claims("svc") | {"iss": issuer}
    if issuer is None:
        del claims["iss"]
    token = jwt.PyJWS().encode(
        json.dumps(claims).encode(), keys.rsa.private_key, "RS256", {"kid": keys.rsa.kid}
    )  # PyJWT's own encoder refuses a non-string iss
    assert "'iss'" in refusal(two_providers, token)


# --- keys bound to their issuers --------------------------------------------------------------

ISSUER_B = "https://idp-b.example"


@pytest.fixture(scope="module")
def provider_b(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    """Provider B's signing key: the same kid as provider A's RSA key (kids are per provider)."""
    directory = tmp_path_factory.mktemp("idp-b")
    key = generate_signing_key(directory, "RS256", "rsa-1")
    write_jwks(directory / "jwks.json", [key])
    return key


@pytest.fixture(scope="module")
def two_providers(keys: JwtKeys, provider_b: SigningKey) -> Authenticator:
    """Provider A (the test issuer, its JWKS) and provider B (its JWKS), each with its keys."""
    b_jwks = provider_b.public_pem.parent / "jwks.json"
    return Authenticator.from_settings(
        IdentitySettings(
            jwt_issuers=(
                JwtIssuerSettings(ISSUER, jwks_file=str(keys.jwks_file), audiences=(AUDIENCE,)),
                JwtIssuerSettings(ISSUER_B, jwks_file=str(b_jwks), audiences=(AUDIENCE,)),
            )
        )
    )


@pytest.mark.parametrize("kid", ["rsa-1", None, "unknown-kid"])
def test_provider_b_cannot_sign_for_provider_a(
    two_providers: Authenticator, provider_b: SigningKey, kid: str | None
) -> None:
    """The impersonation of issue 18: B's key, A's `iss`, A's subject."""
    claims = standard_claims("svc-reporting", roles=["metadata-admin"], issuer=ISSUER)
    token = make_token(provider_b, claims, headers={"kid": kid})
    message = refusal(two_providers, token)
    signed_by_b = "'iss' is not the issuer of the key that signed it"
    assert ("unknown key" if kid == "unknown-kid" else signed_by_b) in message
    own = make_token(provider_b, claims | {"iss": ISSUER_B}, headers={"kid": kid})
    if kid != "unknown-kid":
        caller = two_providers.authenticate(bearer(own), {})
        assert caller.principal == f"jwt:{ISSUER_B}#svc-reporting"


def test_a_key_listed_for_two_issuers_signs_for_each(keys: JwtKeys) -> None:
    shared = str(keys.ec.public_pem)
    auth = Authenticator.from_settings(
        IdentitySettings(
            jwt_issuers=tuple(
                JwtIssuerSettings(name, public_keys=(shared,), audiences=(AUDIENCE,))
                for name in (ISSUER, ISSUER_B)
            )
        )
    )
    for name in (ISSUER, ISSUER_B):
        token = make_token(keys.ec, standard_claims("svc", issuer=name))
        assert auth.authenticate(bearer(token), {}).principal == f"jwt:{name}#svc"
    assert "unknown key" in refusal(auth, make_token(keys.rsa, standard_claims("svc")))


def test_flat_issuer_and_tables_together(keys: JwtKeys, provider_b: SigningKey) -> None:
    b = JwtIssuerSettings(ISSUER_B, public_keys=(str(provider_b.public_pem),), audiences=("b",))
    auth = Authenticator.from_settings(flat(jwt_jwks_file=str(keys.jwks_file), jwt_issuers=(b,)))
    token_a = make_token(keys.rsa, standard_claims("svc"))
    token_b = make_token(provider_b, standard_claims("svc", issuer=ISSUER_B, audience="b"))
    assert auth.authenticate(bearer(token_a), {}).principal == SVC
    assert auth.authenticate(bearer(token_b), {}).principal == f"jwt:{ISSUER_B}#svc"
    wrong_audience = make_token(provider_b, standard_claims("svc", issuer=ISSUER_B))
    assert "audience" in refusal(auth, wrong_audience)


# --- token lifetime ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": 1e20},  # issue 18: accepted for ever
        {"exp": 10**20, "iat": None},
        {"exp": int(time.time()) + 7200, "iat": None},  # no iat: bounded by exp - now
        {"exp": int(time.time()) + 3000, "iat": int(time.time()) - 3000},  # exp - iat too long
    ],
)
def test_lifetime_beyond_the_maximum_is_refused(
    auth: Authenticator, keys: JwtKeys, changes: dict[str, object]
) -> None:
    claims = standard_claims("svc") | changes
    claims = {name: value for name, value in claims.items() if value is not None}
    assert "maximum" in refusal(auth, make_token(keys.rsa, claims))


def test_lifetime_within_the_maximum_is_accepted(auth: Authenticator, keys: JwtKeys) -> None:
    hour = standard_claims("svc", lifetime_seconds=3600)
    assert auth.authenticate(bearer(make_token(keys.rsa, hour)), {}).principal == SVC
    without_iat = {k: v for k, v in standard_claims("svc", lifetime_seconds=600).items()}
    del without_iat["iat"]
    assert auth.authenticate(bearer(make_token(keys.rsa, without_iat)), {}).principal == SVC


def test_max_lifetime_is_configurable(keys: JwtKeys) -> None:
    short = Authenticator.from_settings(
        flat(jwt_jwks_file=str(keys.jwks_file), jwt_max_lifetime_seconds=600)
    )
    token = make_token(keys.rsa, standard_claims("svc", lifetime_seconds=900))
    assert "600 s maximum" in refusal(short, token)
    assert short.authenticate(
        bearer(make_token(keys.rsa, standard_claims("svc", lifetime_seconds=600))), {}
    )


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["soon", [1], 1e400])
def test_time_claims_must_be_numbers(
    auth: Authenticator, keys: JwtKeys, claim: str, value: object
) -> None:
    claims = standard_claims("svc") | {claim: value}
    message = refusal(auth, make_token(keys.rsa, claims))
    assert "malformed" in message or "not valid" in message


# --- configuration ---------------------------------------------------------------------------


def test_no_identity_source_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no identity source"):
        Authenticator.from_settings(IdentitySettings())


def test_client_ca_needs_a_tls_listener(pki: Pki) -> None:
    with pytest.raises(ValueError, match="needs tls_cert"):
        Authenticator.from_settings(IdentitySettings(client_ca=str(pki.ca.cert_path)))


def test_issuer_without_keys(pki: Pki) -> None:
    with pytest.raises(ValueError, match="no keys"):
        Authenticator.from_settings(
            dataclasses.replace(_mtls_settings(pki), jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        )


@pytest.mark.parametrize("name", ["", "https://idp.example#x"])
def test_an_issuer_needs_a_name_without_a_fragment(keys: JwtKeys, name: str) -> None:
    issuer = JwtIssuerSettings(name, jwks_file=str(keys.jwks_file), audiences=(AUDIENCE,))
    with pytest.raises(ValueError, match="non-empty `issuer` without '#'"):
        Authenticator.from_settings(IdentitySettings(jwt_issuers=(issuer,)))


def test_keys_without_an_issuer_are_a_configuration_error(keys: JwtKeys) -> None:
    # Before issue 18 such keys signed for any `iss`: one provider could pose as another.
    with pytest.raises(ValueError, match="non-empty `issuer`"):
        Authenticator.from_settings(
            IdentitySettings(jwt_jwks_file=str(keys.jwks_file), jwt_audience=AUDIENCE)
        )


def test_an_issuer_configured_twice(keys: JwtKeys) -> None:
    issuer = JwtIssuerSettings(ISSUER, jwks_file=str(keys.jwks_file), audiences=(AUDIENCE,))
    with pytest.raises(ValueError, match="configured twice"):
        Authenticator.from_settings(IdentitySettings(jwt_issuers=(issuer, issuer)))


def test_jwks_url_is_fetched_once_at_start(keys: JwtKeys) -> None:
    body = keys.jwks_file.read_bytes()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
        issuer = JwtIssuerSettings(ISSUER, jwks_url=url, audiences=(AUDIENCE,))
        auth = Authenticator.from_settings(IdentitySettings(jwt_issuers=(issuer,)))
        for _ in range(3):
            token = make_token(keys.ec, standard_claims("svc"))
            assert auth.authenticate(bearer(token), {}).principal == SVC
    finally:
        server.shutdown()
        server.server_close()
    assert requests == ["/.well-known/jwks.json"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://idp.example/jwks", "must be https"),
        ("http://localhost.idp.example/jwks", "must be https"),
        ("http://127.idp.example/jwks", "must be https"),
        ("ftp://127.0.0.1/jwks", "must be https"),
        ("http://127.0.0.1:9/jwks", "cannot load"),
    ],
)
def test_unusable_jwks_url(url: str, message: str) -> None:
    issuer = JwtIssuerSettings(ISSUER, jwks_url=url, audiences=(AUDIENCE,))
    with pytest.raises(ValueError, match=message):
        Authenticator.from_settings(IdentitySettings(jwt_issuers=(issuer,)))


def test_unreadable_key_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read public_keys"):
        Authenticator.from_settings(flat(jwt_public_keys=(str(tmp_path / "nope"),)))
    with pytest.raises(ValueError, match="cannot read jwks_file"):
        Authenticator.from_settings(flat(jwt_jwks_file=str(tmp_path / "nope")))


@pytest.mark.parametrize(
    "jwks",
    [
        "not json",
        json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "h"}]}),
        json.dumps({"nokeys": []}),
    ],
)
def test_unusable_jwks(tmp_path: Path, jwks: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks)
    with pytest.raises(ValueError, match=r"JWKS|RS256 or ES256"):
        Authenticator.from_settings(flat(jwt_jwks_file=str(path)))


def test_jwks_with_a_private_key(tmp_path: Path) -> None:
    private = generate_signing_key(tmp_path, "ES256", "ec-private").private_key
    entry = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(private)) | {"alg": "ES256"}
    path = tmp_path / "private.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(ValueError, match="private key"):
        Authenticator.from_settings(flat(jwt_jwks_file=str(path)))


def test_jwks_ignores_encryption_keys(tmp_path: Path, keys: JwtKeys) -> None:
    signing = generate_signing_key(tmp_path, "ES256", "sig")
    encrypting = generate_signing_key(tmp_path, "RS256", "enc")
    write_jwks(tmp_path / "jwks.json", [signing, encrypting])
    document = json.loads((tmp_path / "jwks.json").read_text())
    document["keys"][1]["use"] = "enc"
    (tmp_path / "jwks.json").write_text(json.dumps(document))
    auth = Authenticator.from_settings(flat(jwt_jwks_file=str(tmp_path / "jwks.json")))
    assert auth.authenticate(bearer(make_token(signing, standard_claims("svc"))), {})
    assert "unknown key" in refusal(auth, make_token(encrypting, standard_claims("svc")))


def test_weak_or_unsupported_pem_keys(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(65537, 1024).public_key()
    edwards = ed25519.Ed25519PrivateKey.generate().public_key()
    for name, key, message in (("weak", weak, "shorter than"), ("ed", edwards, "only RSA")):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(key.public_bytes(serialization.Encoding.PEM, _SPKI))
        with pytest.raises(ValueError, match=message):
            Authenticator.from_settings(flat(jwt_public_keys=(str(path),)))
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ValueError, match="not a PEM public key"):
        Authenticator.from_settings(flat(jwt_public_keys=(str(tmp_path / "junk.pem"),)))


def test_a_certificate_may_serve_as_jwt_key(pki: Pki, tmp_path: Path) -> None:
    # The test PKI's certificates carry P-256 keys: usable for ES256.
    assert Authenticator.from_settings(flat(jwt_public_keys=(str(pki.server.cert),)))


# --- listener files ----------------------------------------------------------------------------


def test_plaintext_listener_has_no_credentials() -> None:
    assert server_credentials(IdentitySettings(insecure_dev_identity=True)) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (IdentitySettings(tls_cert="x"), "set together"),
        (IdentitySettings(client_ca="x"), "needs tls_cert"),
    ],
)
def test_incomplete_tls_settings(settings: IdentitySettings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        server_credentials(settings)


def test_mismatched_or_missing_listener_files(pki: Pki) -> None:
    mismatched = ListenerFiles(pki.server.cert, pki.cn_client.key, pki.ca.cert_path)
    with pytest.raises(ValueError, match="does not match"):
        load_configuration(mismatched)
    missing = ListenerFiles(pki.server.cert, pki.server.key, pki.directory / "absent.crt")
    with pytest.raises(ValueError, match="cannot read client_ca"):
        load_configuration(missing)
    not_a_ca = ListenerFiles(pki.server.cert, pki.server.key, pki.server.key)
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_configuration(not_a_ca)


def _mtls_settings(pki: Pki, cn_fallback: bool = False) -> IdentitySettings:
    return IdentitySettings(
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        client_ca=str(pki.ca.cert_path),
        spiffe_cn_fallback=cn_fallback,
    )


_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
