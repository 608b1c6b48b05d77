"""Caller identity: a verified JWT bearer token or mTLS client certificate (SPIFFE ID) → `Caller`.

Precedence, per call:
1. `x-dev-principal` metadata, only when `insecure_dev_identity` is on (never consulted otherwise);
2. an `authorization: Bearer <jwt>` token: when present it must verify, and it names the caller
   (a bad token is refused even over a good client certificate — no silent downgrade);
3. the client certificate verified in the TLS handshake: its SPIFFE ID (the single URI SAN), or
   its subject CN when `spiffe_cn_fallback` is on and the certificate has no spiffe:// URI at all;
4. otherwise UNAUTHENTICATED.

Each source names principals in its own namespace, so no source can claim another's grants:
`spiffe://…` only from a verified certificate's SPIFFE ID, `x509-cn:<CN>` from the CN fallback,
`jwt:<iss>#<sub>` from a verified token (its signed issuer, whose own key verified it: see
service/identity/tokens.py), `dev:<name>` from the dev header.

`authenticate` is pure CPU work over the call's metadata and gRPC's auth context: keys are
loaded once by `Authenticator.from_settings`. Messages never echo a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from service.core.config import IdentitySettings
from service.core.errors import Unauthenticated
from service.core.model import Caller
from service.identity.tokens import JWT_PREFIX as JWT_PREFIX
from service.identity.tokens import TokenVerifier

Metadata = Iterable[tuple[str, str | bytes]]
AuthContext = Mapping[str, Iterable[bytes]]

DEV_PRINCIPAL_KEY = "x-dev-principal"
AUTHORIZATION_KEY = "authorization"
DEV_PREFIX = "dev:"
CN_PREFIX = "x509-cn:"
"""Principal prefixes per identity source; a SPIFFE ID needs none (`spiffe://` is its own)."""

# SPIFFE ID for a workload (X509-SVID leaf): lowercase trust domain, non-empty path.
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+")
_SPIFFE_MAX_LENGTH = 2048


class Authenticator:
    """Turns a call's metadata and TLS auth context into a `Caller`, or raises Unauthenticated."""

    def __init__(
        self, tokens: TokenVerifier | None, certificates: CertificateIdentity | None, dev: bool
    ) -> None:
        self._tokens = tokens
        self._certificates = certificates
        self._dev = dev

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> Authenticator:
        """Load keys once; ValueError on bad configuration or when no identity source is set."""
        if settings.client_ca and not (settings.tls_cert and settings.tls_key):
            raise ValueError("identity: client_ca (mTLS) needs tls_cert and tls_key")
        tokens = TokenVerifier.from_settings(settings)
        certificates = (
            CertificateIdentity(settings.spiffe_cn_fallback) if settings.client_ca else None
        )
        if tokens is None and certificates is None and not settings.insecure_dev_identity:
            raise ValueError(
                "identity: no identity source configured; set client_ca (mTLS), "
                "[[identity.jwt_issuers]] or jwt_issuer with its keys (JWT), or "
                "insecure_dev_identity for development"
            )
        return cls(tokens, certificates, settings.insecure_dev_identity)

    def authenticate(self, metadata: Metadata | None, auth_context: AuthContext) -> Caller:
        """Identify the caller of one RPC (see the module docstring for the precedence)."""
        pairs = tuple(metadata or ())
        if self._dev:
            dev_principal = _single_value(pairs, DEV_PRINCIPAL_KEY)
            if dev_principal:
                return Caller(DEV_PREFIX + dev_principal, "dev")
        authorization = _single_value(pairs, AUTHORIZATION_KEY)
        if authorization is not None:
            return self._verify_bearer(authorization)
        if self._certificates is not None:
            caller = self._certificates.caller(auth_context)
            if caller is not None:
                return caller
        raise Unauthenticated(f"no caller identity: {self._expected()}")

    def _verify_bearer(self, authorization: str) -> Caller:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        if self._tokens is None:
            raise Unauthenticated("bearer tokens are not accepted: no JWT keys are configured")
        return self._tokens.verify(token.strip())

    def _expected(self) -> str:
        sources = []
        if self._certificates is not None:
            sources.append("a client certificate with a SPIFFE ID")
        if self._tokens is not None:
            sources.append("'authorization: Bearer <jwt>' metadata")
        if self._dev:
            sources.append(f"'{DEV_PRINCIPAL_KEY}' metadata (development mode)")
        return "present " + " or ".join(sources)


class CertificateIdentity:
    """The principal of a client certificate that gRPC's TLS handshake has already verified."""

    def __init__(self, cn_fallback: bool) -> None:
        self._cn_fallback = cn_fallback

    def caller(self, auth_context: AuthContext) -> Caller | None:
        """A Caller from the peer certificate; None when the connection carried no certificate."""
        if not _values(auth_context, "x509_pem_cert"):
            return None
        return Caller(self._principal(auth_context), "mtls")

    def _principal(self, auth_context: AuthContext) -> str:
        # gRPC sets peer_spiffe_id only for exactly one URI SAN that looks like a SPIFFE ID.
        spiffe_ids = _values(auth_context, "peer_spiffe_id")
        uris = _values(auth_context, "peer_uri")
        if len(spiffe_ids) == 1 and _is_spiffe_id(spiffe_ids[0]):
            return spiffe_ids[0]
        if any(uri.lower().startswith("spiffe://") for uri in uris):
            raise Unauthenticated(
                "client certificate must carry exactly one valid SPIFFE ID (URI SAN)"
            )
        common_names = _values(auth_context, "x509_common_name")
        if not self._cn_fallback:
            raise Unauthenticated("client certificate has no SPIFFE ID (URI SAN)")
        if len(common_names) != 1 or not common_names[0]:
            raise Unauthenticated("client certificate has no SPIFFE ID and no single subject CN")
        return CN_PREFIX + common_names[0]


def _single_value(metadata: Sequence[tuple[str, str | bytes]], key: str) -> str | None:
    """The one value of `key`; None when absent; Unauthenticated when repeated."""
    values = [value for name, value in metadata if name.lower() == key]
    if len(values) > 1:
        raise Unauthenticated(f"'{key}' metadata must appear at most once")
    if not values:
        return None
    value = values[0]
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _values(auth_context: AuthContext, key: str) -> list[str]:
    return [value.decode("utf-8", "replace") for value in auth_context.get(key, ())]


def _is_spiffe_id(candidate: str) -> bool:
    if len(candidate) > _SPIFFE_MAX_LENGTH or not _SPIFFE_ID.fullmatch(candidate):
        return False
    segments = candidate.removeprefix("spiffe://").split("/")[1:]
    return not any(segment in {".", ".."} for segment in segments)
