"""Connection settings of the client verbs, built once from options and environment variables.

Options win over variables: `--endpoint-url` / IMAGING_PROXY_ENDPOINT (default 127.0.0.1:50051),
`--token` / IMAGING_PROXY_TOKEN, `--dev-principal` / IMAGING_PROXY_DEV_PRINCIPAL,
`--ca-bundle` / IMAGING_PROXY_CA_BUNDLE, `--client-cert` + `--client-key` /
IMAGING_PROXY_CLIENT_CERT + IMAGING_PROXY_CLIENT_KEY, IMAGING_PROXY_MAX_ATTEMPTS (default 5).
A bad option is a syntax error (252); a bad variable or unreadable file is a configuration error
(253).
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from cryptography import x509

from imaging_proxy_client.cli.connection import Connection
from imaging_proxy_client.cli.errors import ConfigError, ParamError
from imaging_proxy_client.engine import Settings

DEFAULT_ENDPOINT = "127.0.0.1:50051"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_TIMEOUT_S = 120.0
_TLS_SCHEMES = {"https": 443, "grpcs": 443}
_PLAIN_SCHEMES = {"http": 80, "grpc": 80}


@dataclass(frozen=True)
class Endpoint:
    """A parsed `--endpoint-url`."""

    url: str
    host: str
    port: int
    tls: bool | None
    """True for https://, False for http://, None when no scheme was given."""

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """`https://proxy:443`, `http://127.0.0.1:50051` or a bare `host:port`; ValueError if not."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    scheme = parts.scheme.lower()
    if scheme and scheme not in _TLS_SCHEMES and scheme not in _PLAIN_SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r} (use https:// or http://)")
    if not parts.hostname:
        raise ValueError("no host")
    if parts.path not in ("", "/"):
        raise ValueError("a gRPC endpoint has no path")
    default_port = _TLS_SCHEMES.get(scheme) or _PLAIN_SCHEMES.get(scheme)
    port = parts.port or default_port
    if port is None:
        raise ValueError("no port (give host:port or a scheme)")
    tls = None if not scheme else scheme in _TLS_SCHEMES
    return Endpoint(url, parts.hostname, port, tls)


def _endpoint(args: argparse.Namespace, environ: Mapping[str, str]) -> Endpoint:
    if args.endpoint_url is not None:
        try:
            return parse_endpoint(args.endpoint_url)
        except ValueError as exc:
            raise ParamError(
                "--endpoint-url", f"Invalid endpoint: {args.endpoint_url} ({exc})"
            ) from None
    url = environ.get("IMAGING_PROXY_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        return parse_endpoint(url)
    except ValueError as exc:
        raise ConfigError(f"Invalid endpoint in IMAGING_PROXY_ENDPOINT: {url} ({exc})") from None


def _option_or_env(value: str | None, environ: Mapping[str, str], name: str) -> str | None:
    return value if value is not None else (environ.get(name) or None)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"Unable to read the {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class _Tls:
    root: bytes | None
    key: bytes | None
    chain: bytes | None


def _tls_material(args: argparse.Namespace, environ: Mapping[str, str]) -> _Tls | None:
    ca = _option_or_env(args.ca_bundle, environ, "IMAGING_PROXY_CA_BUNDLE")
    cert = _option_or_env(args.client_cert, environ, "IMAGING_PROXY_CLIENT_CERT")
    key = _option_or_env(args.client_key, environ, "IMAGING_PROXY_CLIENT_KEY")
    if (cert is None) != (key is None):
        raise ParamError("--client-cert", "--client-cert and --client-key must be given together")
    if ca is None and cert is None:
        return None
    return _Tls(
        root=_read(ca, "CA bundle") if ca else None,
        key=_read(key, "client key") if key else None,
        chain=_read(cert, "client certificate") if cert else None,
    )


def _timeout(value: float) -> float | None:
    return None if value == 0 else value


def _max_attempts(environ: Mapping[str, str]) -> int:
    raw = environ.get("IMAGING_PROXY_MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS))
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"IMAGING_PROXY_MAX_ATTEMPTS must be a positive integer, not {raw!r}")
    return int(raw)


def _retry_timeout(args: argparse.Namespace, environ: Mapping[str, str]) -> float | None:
    """--cli-retry-timeout, else IMAGING_PROXY_RETRY_TIMEOUT, else the default; 0: unbounded."""
    if getattr(args, "cli_retry_timeout", None) is not None:
        return _timeout(args.cli_retry_timeout)
    raw = environ.get("IMAGING_PROXY_RETRY_TIMEOUT", str(DEFAULT_RETRY_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(
            f"IMAGING_PROXY_RETRY_TIMEOUT must be a number of seconds >= 0, not {raw!r}"
        )
    return _timeout(seconds)


def identity_metadata(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """x-dev-principal (dev mode) and the bearer token (JWT mode), when configured."""
    metadata: list[tuple[str, str]] = []
    principal = _option_or_env(args.dev_principal, environ, "IMAGING_PROXY_DEV_PRINCIPAL")
    if principal:
        metadata.append(("x-dev-principal", principal))
    token = _option_or_env(args.token, environ, "IMAGING_PROXY_TOKEN")
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    return tuple(metadata)


def resolve_connection(args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    """Everything the client needs to reach the proxy, validated before any connection."""
    endpoint = _endpoint(args, environ)
    tls = _tls_material(args, environ)
    use_tls = endpoint.tls if endpoint.tls is not None else (tls is not None or args.no_verify_ssl)
    options: tuple[tuple[str, str | int], ...] = ()
    credentials = None
    connect_timeout = _timeout(args.cli_connect_timeout)
    if use_tls:
        material = tls or _Tls(None, None, None)
        if args.no_verify_ssl:
            material, options = _unverified(endpoint, material, connect_timeout)
        credentials = grpc.ssl_channel_credentials(material.root, material.key, material.chain)
    metadata = identity_metadata(args, environ)
    if not use_tls and any(k == "authorization" for k, _ in metadata):
        _warn_plaintext_token(endpoint)
    settings = Settings(
        target=endpoint.target,
        credentials=credentials,
        channel_options=options,
        metadata=metadata,
        connect_timeout=connect_timeout,
        read_timeout=_timeout(args.cli_read_timeout),
        max_attempts=_max_attempts(environ),
        retry_timeout=_retry_timeout(args, environ),
    )
    client_cert = bool(use_tls and tls is not None and tls.chain)
    return Connection(endpoint_url=endpoint.url, settings=settings, client_cert=client_cert)


def _warn_plaintext_token(endpoint: Endpoint) -> None:
    if endpoint.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(
            f"warning: sending a bearer token without TLS to {endpoint.url}; use https://\n"
        )


def _unverified(
    endpoint: Endpoint, material: _Tls, connect_timeout: float | None
) -> tuple[_Tls, tuple[tuple[str, str | int], ...]]:
    """--no-verify-ssl: trust whatever certificate the proxy presents (gRPC cannot skip checks)."""
    sys.stderr.write(
        f"warning: --no-verify-ssl: the certificate of {endpoint.host} is not verified; "
        "the connection is encrypted but its peer is not authenticated\n"
    )
    try:
        pem = ssl.get_server_certificate(
            (endpoint.host, endpoint.port), timeout=connect_timeout or 60
        )
    except OSError as exc:
        raise ConfigError(f'Could not fetch the certificate of "{endpoint.url}": {exc}') from None
    options: tuple[tuple[str, str | int], ...] = ()
    name = _first_dns_name(pem.encode())
    if name:
        options = (("grpc.ssl_target_name_override", name),)
    return _Tls(pem.encode(), material.key, material.chain), options


def _first_dns_name(pem: bytes) -> str | None:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None
