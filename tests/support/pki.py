"""Local stack: TLS and JWT material (certificate authorities, SPIFFE client certificates,
signing keys, tokens) for running the proxy with real mTLS and real JWTs.

Everything is generated with `cryptography` into a directory the caller owns (e.g. a pytest
tmp dir):

    pki = write_pki(tmp_path / "pki")                # CA, server and client certificates
    keys = write_jwt_keys(tmp_path / "jwt")          # RS256 + ES256 signing keys, PEMs and a JWKS
    settings = identity_settings(pki, keys)          # mTLS + JWT IdentitySettings for the proxy
    creds = client_credentials(pki, pki.spiffe_client)
    token = make_token(keys.rsa, standard_claims("spiffe://hospital.example/ns/imaging/sa/admin"))

TLS certificates use EC P-256 keys (fast to generate); the JWT RSA key is 2048 bits.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.core.config import IdentitySettings

TRUST_DOMAIN = "hospital.example"
ADMIN_SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/ns/imaging/sa/admin"
"""The SPIFFE ID in `Pki.spiffe_client`."""
ISSUER = "https://idp.hospital.example"
"""The `iss` that `identity_settings` requires and `standard_claims` writes."""
AUDIENCE = "imaging-proxy"
"""The `aud` that `identity_settings` requires and `standard_claims` writes."""

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertificateFiles:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate PEM), the order grpc credentials take them in."""
        return self.key.read_bytes(), self.cert.read_bytes()


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates into one directory."""

    name: str
    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def cert_path(self) -> Path:
        """The CA certificate (PEM): a client CA bundle or a client's trusted roots."""
        return self.directory / f"{self.name}.crt"

    @classmethod
    def create(cls, directory: Path, name: str) -> CertificateAuthority:
        """Generate a CA called `name` and write `<directory>/<name>.crt`."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        builder = _builder(subject, subject, key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        builder = builder.add_extension(_ca_key_usage(), critical=True)
        authority = cls(name, directory, key, builder.sign(key, hashes.SHA256()))
        authority.cert_path.write_bytes(authority.certificate.public_bytes(_PEM))
        return authority

    def issue_server(
        self, name: str, hosts: Sequence[str] = ("127.0.0.1", "localhost")
    ) -> CertificateFiles:
        """A server certificate for `hosts` (IPs or DNS names), written as `<name>.crt/.key`."""
        sans: list[x509.GeneralName] = [_host_san(host) for host in hosts]
        return self._issue(name, hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_client(
        self, name: str, common_name: str, uris: Sequence[str] = ()
    ) -> CertificateFiles:
        """A client certificate with subject CN `common_name` and URI SANs `uris` (SPIFFE IDs)."""
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        return self._issue(name, common_name, sans, ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(
        self,
        name: str,
        common_name: str,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
    ) -> CertificateFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = _builder(subject, self.certificate.subject, key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        files = CertificateFiles(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        files.cert.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(_PEM))
        files.key.write_bytes(_private_pem(key))
        return files


@dataclass(frozen=True)
class Pki:
    """The standard test PKI written by `write_pki`."""

    directory: Path
    ca: CertificateAuthority
    """Issues everything below except `foreign_client`; `ca.cert_path` is the client CA bundle."""
    server: CertificateFiles
    """Server certificate for 127.0.0.1 and localhost."""
    spiffe_client: CertificateFiles
    """Client certificate with URI SAN `ADMIN_SPIFFE_ID` (and CN "imaging-admin")."""
    cn_client: CertificateFiles
    """Client certificate with CN "legacy-service" and no SAN at all."""
    foreign_ca: CertificateAuthority
    """A second, untrusted CA."""
    foreign_client: CertificateFiles
    """Client certificate with a valid-looking SPIFFE ID, issued by `foreign_ca`."""


def write_pki(directory: Path) -> Pki:
    """Generate the standard test PKI into `directory` (created if missing)."""
    ca = CertificateAuthority.create(directory, "ca")
    foreign = CertificateAuthority.create(directory, "foreign-ca")
    return Pki(
        directory=directory,
        ca=ca,
        server=ca.issue_server("server"),
        spiffe_client=ca.issue_client("spiffe-client", "imaging-admin", [ADMIN_SPIFFE_ID]),
        cn_client=ca.issue_client("cn-client", "legacy-service"),
        foreign_ca=foreign,
        foreign_client=foreign.issue_client("foreign-client", "intruder", [ADMIN_SPIFFE_ID]),
    )


def client_credentials(pki: Pki, client: CertificateFiles | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting `pki.ca`, presenting `client` (None: no client certificate)."""
    roots = pki.ca.cert_path.read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    key, cert = client.read()
    return grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=cert)


@dataclass(frozen=True)
class SigningKey:
    """A JWT signing key: the private key, its algorithm, its `kid` and its public PEM file."""

    private_key: PrivateKey
    algorithm: str
    kid: str
    public_pem: Path


@dataclass(frozen=True)
class JwtKeys:
    """The keys written by `write_jwt_keys`."""

    rsa: SigningKey
    """RS256, kid "rsa-1"."""
    ec: SigningKey
    """ES256 (P-256), kid "ec-1"."""
    jwks_file: Path
    """A JWKS holding the public halves of `rsa` and `ec`, with their kids and algs."""


def write_jwt_keys(directory: Path) -> JwtKeys:
    """Generate an RS256 and an ES256 signing key, their public PEMs and a JWKS file."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = JwtKeys(
        rsa=_signing_key(directory, rsa.generate_private_key(65537, 2048), "RS256", "rsa-1"),
        ec=_signing_key(directory, ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1"),
        jwks_file=directory / "jwks.json",
    )
    write_jwks(keys.jwks_file, [keys.rsa, keys.ec])
    return keys


def write_jwks(path: Path, keys: Sequence[SigningKey]) -> None:
    """Write a JWKS (public keys, with `kid`, `alg` and `use: sig`) for `keys` to `path`."""
    entries = [_jwk(key) for key in keys]
    path.write_text(json.dumps({"keys": entries}, indent=2))


def generate_signing_key(directory: Path, algorithm: str, kid: str) -> SigningKey:
    """A fresh RS256 or ES256 key, e.g. one the proxy does not trust."""
    private: PrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return _signing_key(directory, private, algorithm, kid)


def standard_claims(
    subject: str,
    roles: Sequence[str] = (),
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    lifetime_seconds: int = 300,
) -> dict[str, object]:
    """Claims the proxy accepts with `identity_settings`: sub, roles, iss, aud, iat, nbf, exp."""
    now = int(time.time())
    return {
        "sub": subject,
        "roles": list(roles),
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
    }


def make_token(
    key: SigningKey,
    claims: Mapping[str, object],
    alg: str | None = None,
    headers: Mapping[str, object] | None = None,
) -> str:
    """Sign `claims` with `key`; `alg` and the `kid` header default to the key's own.

    `headers={"kid": None}` leaves the `kid` header out.
    """
    merged = {"kid": key.kid, **(headers or {})}
    merged = {name: value for name, value in merged.items() if value is not None}
    return jwt.encode(dict(claims), key.private_key, algorithm=alg or key.algorithm, headers=merged)


def identity_settings(pki: Pki, keys: JwtKeys) -> IdentitySettings:
    """Settings enabling both mTLS (against `pki.ca`) and JWTs (`keys.jwks_file`, ISSUER, AUDIENCE).

    Variants: `dataclasses.replace(identity_settings(pki, keys), spiffe_cn_fallback=True)`.
    """
    return IdentitySettings(
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        client_ca=str(pki.ca.cert_path),
        jwt_jwks_file=str(keys.jwks_file),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )


def identity_args(pki: Pki, keys: JwtKeys, client_ca: bool = True) -> list[str]:
    """`serve` options for a TLS listener (mTLS when `client_ca`) that also accepts JWTs."""
    args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if client_ca:
        args += ["--client-ca", str(pki.ca.cert_path)]
    jwt_args = ["--jwt-jwks-file", str(keys.jwks_file), "--jwt-issuer", ISSUER]
    return [*args, *jwt_args, "--jwt-audience", AUDIENCE]


_PEM = serialization.Encoding.PEM


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _signing_key(directory: Path, private: PrivateKey, algorithm: str, kid: str) -> SigningKey:
    public_pem = directory / f"{kid}.pub.pem"
    public_pem.write_bytes(
        private.public_key().public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return SigningKey(private, algorithm, kid, public_pem)


def _jwk(key: SigningKey) -> dict[str, object]:
    algorithm = jwt.get_algorithm_by_name(key.algorithm)
    entry: dict[str, object] = json.loads(algorithm.to_jwk(key.private_key.public_key()))
    return entry | {"kid": key.kid, "alg": key.algorithm, "use": "sig"}
