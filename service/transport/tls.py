"""Listener credentials: server certificate, key and client CA, reloaded when they change on disk.

gRPC asks `CertificateReloader.fetch` before every new TLS handshake. It compares the files'
stat stamps (cheap) and rebuilds the configuration only after a change, so certificates rotate
without a restart: new connections get the new files, open connections and their streams keep
the session they negotiated. A half-written rotation (key not matching the certificate, a file
missing or unparsable) is logged and skipped; the previous configuration stays in use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from service.core.config import IdentitySettings

log = structlog.get_logger(__name__)

Stamp = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class ListenerFiles:
    """The PEM files behind the listener; `client_ca` empty means no client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> ListenerFiles | None:
        """None for a plaintext listener; ValueError for an incomplete TLS configuration."""
        if not settings.tls_cert and not settings.tls_key:
            if settings.client_ca:
                raise ValueError("tls: client_ca (mTLS) needs tls_cert and tls_key")
            return None
        if not (settings.tls_cert and settings.tls_key):
            raise ValueError("tls: tls_cert and tls_key must be set together")
        client_ca = Path(settings.client_ca) if settings.client_ca else None
        return cls(Path(settings.tls_cert), Path(settings.tls_key), client_ca)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


def server_credentials(settings: IdentitySettings) -> grpc.ServerCredentials | None:
    """TLS credentials for the listener (None: plaintext); client certificates required with a CA.

    Raises ValueError when the files are missing, unparsable or the key does not match.
    """
    files = ListenerFiles.from_settings(settings)
    if files is None:
        return None
    reloader = CertificateReloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader.fetch,  # type: ignore[arg-type]  # the stub omits None, gRPC's "no change"
        require_client_authentication=files.client_ca is not None,
    )


class CertificateReloader:
    """gRPC's certificate-config fetcher: a new configuration when the files changed, else None."""

    def __init__(self, files: ListenerFiles) -> None:
        self._files = files
        self._lock = threading.Lock()  # gRPC may call fetch from several handshake threads
        try:
            self._stamp = _stamp(files.paths)
        except OSError:
            self._stamp = ()  # load_configuration names the missing file
        self.initial = load_configuration(files)
        self.reloads = 0
        """How many times a changed set of files was loaded (for tests and metrics)."""

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake; must be cheap and must not raise."""
        try:
            stamp = _stamp(self._files.paths)
        except OSError:
            return None  # a file is being replaced: keep serving the current one
        with self._lock:
            if stamp == self._stamp:
                return None
            self._stamp = stamp  # a broken set is tried once, then again after the next change
            try:
                configuration = load_configuration(self._files)
            except ValueError as error:
                log.warning("tls_reload_failed", error=str(error))
                return None
            self.reloads += 1
        log.info("tls_reloaded", cert=str(self._files.cert), client_ca=str(self._files.client_ca))
        return configuration


def load_configuration(files: ListenerFiles) -> grpc.ServerCertificateConfiguration:
    """Read and check the PEM files; ValueError with a clear message when they are unusable."""
    cert, key = _read(files.cert, "tls_cert"), _read(files.key, "tls_key")
    _check_pair(files, cert, key)
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, "client_ca")
        _parse_certificates(client_ca, f"client_ca {files.client_ca}")
    return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)


def _check_pair(files: ListenerFiles, cert: bytes, key: bytes) -> None:
    leaf = _parse_certificates(cert, f"tls_cert {files.cert}")[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"tls: tls_key {files.key} is not an unencrypted PEM key: {error}"
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private_key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(
        der, spki
    ):
        raise ValueError(f"tls: tls_key {files.key} does not match tls_cert {files.cert}")


def _parse_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"tls: {what} holds no PEM certificate") from None


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"tls: cannot read {setting} file {path}: {error.strerror}") from None


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    # stat follows symlinks, so Kubernetes' atomic ..data symlink swap changes the inode.
    stats = [os.stat(path) for path in paths]
    return tuple((s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)
