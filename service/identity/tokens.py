"""Bearer tokens: a JWT → `Caller`, valid only when verified by a key of the issuer it names.

Each trusted key belongs to one configured issuer (`[[identity.jwt_issuers]]`, or the flat
`jwt_*` keys as one issuer). The key that verifies a token's signature fixes the issuer: PyJWT
checks the signed `iss` against that key's issuer (and its audiences and leeway), so provider
B's key cannot vouch for a token that says it comes from provider A. Each issuer also sets the
audiences it may address and the longest lifetime it may grant. Keys are loaded once (files, or
a JWKS URL fetched at start with PyJWKClient), so `verify` does no I/O. Messages never echo a
token.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.core.config import IdentitySettings, JwtIssuerSettings
from service.core.errors import Unauthenticated
from service.core.model import Caller

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

ALGORITHMS = ("RS256", "ES256")
"""The only signature algorithms accepted; `none` and HMAC (key confusion) never are."""
MIN_RSA_BITS = 2048
JWT_PREFIX = "jwt:"
JWKS_FETCH_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class VerificationKey:
    """One trusted public key of one issuer."""

    kid: str
    """Key id from the JWKS; "" for a PEM file (tried for any kid)."""
    algorithm: str
    key: PublicKey


@dataclass(frozen=True)
class Issuer:
    """One identity provider: its keys and what its tokens must satisfy."""

    name: str
    keys: tuple[VerificationKey, ...]
    audiences: tuple[str, ...]
    max_lifetime: float
    leeway: float
    principal_claim: str
    roles_claim: str

    @classmethod
    def from_settings(cls, settings: JwtIssuerSettings) -> Issuer:
        """Load its keys; ValueError naming the issuer for anything unusable."""
        name = settings.issuer
        if not name or "#" in name:
            # `#` separates issuer and subject in the principal: it would make them ambiguous.
            raise ValueError("identity: every JWT issuer needs a non-empty `issuer` without '#'")
        where = f"identity: issuer {name}"
        if not settings.audiences or not all(settings.audiences):
            raise ValueError(f"{where}: set its audiences (tokens minted for another service)")
        if not settings.principal_claim or not settings.roles_claim:
            raise ValueError(f"{where}: principal_claim and roles_claim must be set")
        keys = [_load_pem_key(Path(path)) for path in settings.public_keys]
        if settings.jwks_file:
            keys.extend(_jwks_keys(_read_jwks(Path(settings.jwks_file)), settings.jwks_file))
        if settings.jwks_url:
            keys.extend(_jwks_keys(_fetch_jwks(settings.jwks_url), settings.jwks_url))
        if not keys:
            raise ValueError(f"{where}: no keys; set jwks_file, jwks_url or public_keys")
        return cls(
            name=name,
            keys=tuple(keys),
            audiences=tuple(settings.audiences),
            max_lifetime=settings.max_lifetime_seconds,
            leeway=settings.leeway_seconds,
            principal_claim=settings.principal_claim,
            roles_claim=settings.roles_claim,
        )


class TokenVerifier:
    """Verifies JWT bearer tokens against the keys of the issuer each token names."""

    def __init__(self, issuers: Sequence[Issuer]) -> None:
        if len({issuer.name for issuer in issuers}) != len(issuers):
            raise ValueError("identity: an issuer is configured twice; give each its keys once")
        self._issuers = tuple(issuers)

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> TokenVerifier | None:
        """None when no issuer is configured; ValueError on unusable keys or settings."""
        issuers = [Issuer.from_settings(issuer) for issuer in settings.issuers()]
        return cls(issuers) if issuers else None

    def verify(self, token: str) -> Caller:
        """Check signature and claims; Unauthenticated with a fixed message when anything fails."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("bearer token is malformed") from None
        claims, issuer = _decode(token, self._candidates(header))
        _check_lifetime(claims, issuer)
        return Caller(
            principal=_principal(claims, issuer),
            auth_method="jwt",
            roles=_roles(claims, issuer),
            claims=claims,
        )

    def _candidates(self, header: Mapping[str, object]) -> list[tuple[VerificationKey, Issuer]]:
        """The keys (each with its issuer) that may have signed a token with this header: per
        issuer, its keys with the token's kid, else its keys without a kid (PEM files)."""
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated("bearer token algorithm is not accepted (RS256 or ES256 only)")
        kid = header.get("kid")
        candidates = []
        for issuer in self._issuers:
            named = [key for key in issuer.keys if kid and key.kid == kid]
            pool = named or [key for key in issuer.keys if not key.kid or kid is None]
            candidates += [(key, issuer) for key in pool if key.algorithm == algorithm]
        if not candidates:
            raise Unauthenticated("bearer token is signed by an unknown key")
        return candidates


def _decode(
    token: str, candidates: Sequence[tuple[VerificationKey, Issuer]]
) -> tuple[dict[str, object], Issuer]:
    """The claims, verified by a candidate key and checked against that key's own issuer: its
    `iss`, audiences and leeway. A key of another issuer that verifies the signature (or shares
    a kid) never makes a token of this issuer valid."""
    another_issuer = False
    for key, issuer in candidates:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=list(issuer.audiences),
                issuer=issuer.name,
                leeway=issuer.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            continue  # signed by another trusted key, perhaps
        except jwt.InvalidIssuerError:
            another_issuer = True  # the key may be listed for its issuer too
            continue
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(_token_error(error)) from None
        return claims, issuer
    if another_issuer:
        raise Unauthenticated("bearer token 'iss' is not the issuer of the key that signed it")
    raise Unauthenticated("bearer token signature does not verify against any trusted key")


def _check_lifetime(claims: Mapping[str, object], issuer: Issuer) -> None:
    """`exp - iat` (when `iat` is given) and `exp - now` within the issuer's max lifetime.

    PyJWT has already checked that exp (and iat, nbf when present) are numbers, exp not past,
    iat and nbf not in the future. A token without `iat` is bounded by `exp - now` alone."""
    expires = float(claims["exp"])  # type: ignore[arg-type]
    limit = f"longer than the issuer's {issuer.max_lifetime:g} s maximum"
    issued = claims.get("iat")
    if issued is not None and expires - float(issued) > issuer.max_lifetime:  # type: ignore[arg-type]
        raise Unauthenticated(f"bearer token lifetime (exp - iat) is {limit}")
    if expires - time.time() > issuer.max_lifetime + issuer.leeway:
        raise Unauthenticated(f"bearer token expires {limit} from now")


def _principal(claims: Mapping[str, object], issuer: Issuer) -> str:
    """`jwt:<iss>#<subject>`: the issuer keeps two identity providers' subjects apart."""
    principal = claims.get(issuer.principal_claim)
    if not isinstance(principal, str) or not principal:
        raise Unauthenticated(f"bearer token lacks a string '{issuer.principal_claim}' claim")
    return f"{JWT_PREFIX}{issuer.name}#{principal}"


def _roles(claims: Mapping[str, object], issuer: Issuer) -> tuple[str, ...]:
    roles = claims.get(issuer.roles_claim, [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        claim = issuer.roles_claim
        raise Unauthenticated(f"bearer token '{claim}' claim must be a list of strings")
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


# --- loading keys ------------------------------------------------------------------------------


def _load_pem_key(path: Path) -> VerificationKey:
    data = _read(path, "public_keys")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise ValueError(f"identity: {path} is not a PEM public key or certificate") from None
    return _verification_key("", key, str(path))


def _read_jwks(path: Path) -> jwt.PyJWKSet:
    text = _read(path, "jwks_file").decode("utf-8", "replace")
    try:
        return jwt.PyJWKSet.from_json(text)
    except (jwt.PyJWTError, json.JSONDecodeError) as error:
        raise ValueError(f"identity: {path} is not a usable JWKS: {error}") from None


def _fetch_jwks(url: str) -> jwt.PyJWKSet:
    """The issuer's JWKS endpoint, read once at start (PyJWKClient: urllib, its own timeout)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and _loopback(parsed.hostname)):
        raise ValueError(f"identity: jwks_url {url} must be https:// (plain http: loopback only)")
    try:
        return jwt.PyJWKClient(url, timeout=JWKS_FETCH_TIMEOUT_SECONDS).get_jwk_set()
    except jwt.PyJWTError as error:
        raise ValueError(f"identity: cannot load the JWKS at {url}: {error}") from None


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _jwks_keys(jwks: jwt.PyJWKSet, source: str) -> list[VerificationKey]:
    # Keys meant for encryption or for other algorithms are ignored: they never sign our tokens.
    usable = [
        jwk for jwk in jwks.keys if jwk.public_key_use != "enc" and jwk.algorithm_name in ALGORITHMS
    ]
    if not usable:
        raise ValueError(f"identity: {source} has no RS256 or ES256 signing key")
    return [
        _verification_key(jwk.key_id or "", jwk.key, f"{source} kid={jwk.key_id}") for jwk in usable
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
