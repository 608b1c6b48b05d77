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
`jwt:<iss>#<sub>` from a verified token (its signed issuer), `dev:<name>` from the dev header.

`authenticate` is pure CPU work over the call's metadata and gRPC's auth context: keys are
loaded once by `Authenticator.from_settings`. Messages never echo a token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.config import IdentitySettings
from service.errors import Unauthenticated
from service.model import Caller

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
Metadata = Iterable[tuple[str, str | bytes]]
AuthContext = Mapping[str, Iterable[bytes]]

DEV_PRINCIPAL_KEY = "x-dev-principal"
AUTHORIZATION_KEY = "authorization"
ALGORITHMS = ("RS256", "ES256")
"""The only signature algorithms accepted; `none` and HMAC (key confusion) never are."""
MIN_RSA_BITS = 2048

DEV_PREFIX = "dev:"
JWT_PREFIX = "jwt:"
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
                "jwt_public_keys or jwt_jwks_file (JWT), or insecure_dev_identity for development"
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


@dataclass(frozen=True)
class VerificationKey:
    """One trusted public key for bearer tokens."""

    kid: str
    """Key id from the JWKS; "" for a PEM file (tried for any kid)."""
    algorithm: str
    key: PublicKey


class TokenVerifier:
    """Verifies JWT bearer tokens against keys loaded once (PEM files and/or a JWKS file)."""

    def __init__(self, keys: Sequence[VerificationKey], settings: IdentitySettings) -> None:
        self._keys = tuple(keys)
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._leeway = settings.jwt_leeway_seconds
        self._principal_claim = settings.jwt_principal_claim
        self._roles_claim = settings.jwt_roles_claim
        # `iss` is always required: it names the principal's namespace (jwt:<iss>#<sub>).
        self._required = ["exp", "iss", *(["aud"] if self._audience else [])]

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> TokenVerifier | None:
        """None when no JWT keys are configured; ValueError on unusable keys or settings."""
        keys = [_load_pem_key(Path(path)) for path in settings.jwt_public_keys]
        if settings.jwt_jwks_file:
            keys.extend(_load_jwks(Path(settings.jwt_jwks_file)))
        if not keys:
            if settings.jwt_issuer or settings.jwt_audience:
                raise ValueError("identity: jwt_issuer/jwt_audience set but no JWT keys configured")
            return None
        if settings.jwt_leeway_seconds < 0:
            raise ValueError("identity: jwt_leeway_seconds must not be negative")
        if not settings.jwt_principal_claim or not settings.jwt_roles_claim:
            raise ValueError("identity: jwt_principal_claim and jwt_roles_claim must be set")
        return cls(keys, settings)

    def verify(self, token: str) -> Caller:
        """Check signature and claims; Unauthenticated with a fixed message when anything fails."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("bearer token is malformed") from None
        claims = self._decode(token, self._candidates(header))
        return Caller(
            principal=self._principal(claims),
            auth_method="jwt",
            roles=self._roles(claims),
            claims=claims,
        )

    def _candidates(self, header: Mapping[str, object]) -> list[VerificationKey]:
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated("bearer token algorithm is not accepted (RS256 or ES256 only)")
        kid = header.get("kid")
        named = [key for key in self._keys if kid and key.kid == kid]
        pool = named or [key for key in self._keys if not key.kid or kid is None]
        candidates = [key for key in pool if key.algorithm == algorithm]
        if not candidates:
            raise Unauthenticated("bearer token is signed by an unknown key")
        return candidates

    def _decode(self, token: str, candidates: Sequence[VerificationKey]) -> dict[str, object]:
        for candidate in candidates:
            try:
                return jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[candidate.algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options={"require": self._required},
                )
            except jwt.InvalidSignatureError:
                continue  # signed by another trusted key, perhaps
            except jwt.InvalidTokenError as error:
                raise Unauthenticated(_token_error(error)) from None
        raise Unauthenticated("bearer token signature does not verify against any trusted key")

    def _principal(self, claims: Mapping[str, object]) -> str:
        """`jwt:<iss>#<subject>`: the issuer keeps two identity providers' subjects apart."""
        principal = claims.get(self._principal_claim)
        if not isinstance(principal, str) or not principal:
            raise Unauthenticated(f"bearer token lacks a string '{self._principal_claim}' claim")
        issuer = claims.get("iss")
        # An issuer is a URL without a fragment (OIDC); a '#' in it would make principals ambiguous.
        if not isinstance(issuer, str) or not issuer or "#" in issuer:
            raise Unauthenticated("bearer token 'iss' claim must be a non-empty string without '#'")
        return f"{JWT_PREFIX}{issuer}#{principal}"

    def _roles(self, claims: Mapping[str, object]) -> tuple[str, ...]:
        roles = claims.get(self._roles_claim, [])
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise Unauthenticated(
                f"bearer token '{self._roles_claim}' claim must be a list of strings"
            )
        return tuple(roles)


# Most specific first: the first class in an error's MRO found here names the message.
_TOKEN_ERRORS: dict[type[jwt.InvalidTokenError], str] = {
    jwt.ExpiredSignatureError: "bearer token has expired",
    jwt.ImmatureSignatureError: "bearer token is not valid yet (nbf/iat in the future)",
    jwt.InvalidIssuerError: "bearer token issuer is not accepted",
    jwt.InvalidAudienceError: "bearer token audience is not accepted",
    jwt.InvalidAlgorithmError: "bearer token algorithm is not accepted (RS256 or ES256 only)",
    jwt.DecodeError: "bearer token is malformed",
    jwt.InvalidTokenError: "bearer token is not valid",
}


def _token_error(error: jwt.InvalidTokenError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"bearer token lacks the required '{error.claim}' claim"
    message = next(_TOKEN_ERRORS[cls] for cls in type(error).__mro__ if cls in _TOKEN_ERRORS)
    return f"{message} ({type(error).__name__})"


def _load_pem_key(path: Path) -> VerificationKey:
    data = _read(path, "jwt_public_keys")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise ValueError(f"identity: {path} is not a PEM public key or certificate") from None
    return _verification_key("", key, str(path))


def _load_jwks(path: Path) -> list[VerificationKey]:
    text = _read(path, "jwt_jwks_file").decode("utf-8", "replace")
    try:
        jwks = jwt.PyJWKSet.from_json(text)
    except (jwt.PyJWTError, json.JSONDecodeError) as error:
        raise ValueError(f"identity: {path} is not a usable JWKS: {error}") from None
    # Keys meant for encryption or for other algorithms are ignored: they never sign our tokens.
    usable = [
        jwk for jwk in jwks.keys if jwk.public_key_use != "enc" and jwk.algorithm_name in ALGORITHMS
    ]
    if not usable:
        raise ValueError(f"identity: {path} has no RS256 or ES256 signing key")
    return [
        _verification_key(jwk.key_id or "", jwk.key, f"{path} kid={jwk.key_id}") for jwk in usable
    ]


def _verification_key(kid: str, key: object, source: str) -> VerificationKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"identity: {source}: RSA key shorter than {MIN_RSA_BITS} bits")
        return VerificationKey(kid, "RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return VerificationKey(kid, "ES256", key)
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"identity: {source}: a private key; configure public keys only")
    raise ValueError(f"identity: {source}: only RSA (RS256) and P-256 (ES256) keys are accepted")


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"identity: cannot read {setting} file {path}: {error.strerror}") from None


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
