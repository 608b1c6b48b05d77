"""How the client proves who it is, mirroring the server's identity sources (TLS, JWT, dev)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Credentials:
    """TLS material and identity headers; build one with `tls()`, `from_files()` or `insecure()`."""

    use_tls: bool
    """False only for the demo's plaintext channel."""
    ca_bundle: bytes | None = None
    """PEM roots to verify the proxy; None for the system's."""
    client_cert: bytes | None = None
    """PEM certificate chain for mTLS (the server's `tls` identity source)."""
    client_key: bytes | None = None
    token: str | None = None
    """A bearer JWT (the server's `jwt` identity source)."""
    dev_principal: str | None = None
    """x-dev-principal (the server's insecure `dev` identity source, for demos only)."""

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")

    @classmethod
    def tls(
        cls,
        ca_bundle: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        token: str | None = None,
    ) -> Credentials:
        """TLS, with mTLS when a client certificate is given and a bearer token when one is."""
        return cls(True, ca_bundle, client_cert, client_key, token)

    @classmethod
    def from_files(
        cls,
        ca_bundle: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        token: str | None = None,
    ) -> Credentials:
        """`tls()` with the PEM material read from files."""
        return cls.tls(_read(ca_bundle), _read(client_cert), _read(client_key), token)

    @classmethod
    def insecure(cls, dev_principal: str | None = None, token: str | None = None) -> Credentials:
        """A plaintext channel (a local demo or test stack)."""
        return cls(False, token=token, dev_principal=dev_principal)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """The gRPC channel credentials; None for plaintext."""
        if not self.use_tls:
            return None
        return grpc.ssl_channel_credentials(self.ca_bundle, self.client_key, self.client_cert)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The identity headers sent with every call."""
        headers: list[tuple[str, str]] = []
        if self.dev_principal:
            headers.append(("x-dev-principal", self.dev_principal))
        if self.token:
            headers.append(("authorization", f"Bearer {self.token}"))
        return tuple(headers)

    def __repr__(self) -> str:
        # Never show the token or key.
        return f"Credentials(use_tls={self.use_tls}, dev_principal={self.dev_principal!r})"


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).expanduser().read_bytes()
