"""The secured product as processes: real OPA, the emulator, `imaging-proxy serve` with mTLS + JWT.

`running_secure_stack` runs what a hospital would deploy: a proxy whose listener requires client
certificates from the test CA (SPIFFE IDs) and also accepts JWT bearer tokens (the token names the
caller when present), in front of a real OPA with `policies/` and the emulator. Fixtures wrapping
it live in `tests/e2e/security/conftest.py`; the processes (started by `devstack`),
channels, credentials and polling helpers here are shared by the security and the fuzz tests.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack import servers
from devstack.admin import EmulatorAdmin
from devstack.examples import DEMO_DATASTORE_ID
from devstack.polling import eventually as eventually
from devstack.processes import Child
from devstack.proxies import ProxyProcess, launch_proxy
from devstack.seeds import two_series_studies
from devstack.settings import Sections
from devstack.stack import StackSpec, running_stack
from tests.support.pki import (
    CertificateFiles,
    JwtKeys,
    Pki,
    identity_args,
    make_token,
    standard_claims,
    write_jwt_keys,
    write_pki,
)

DATASTORE_ID = DEMO_DATASTORE_ID
"""The emulator's data store: the demo id, so the `demo-*` grants in policies/data.json apply."""
OTHER_DATASTORE_ID = "0123456789abcdef0123456789abcdef"
"""A data store no grant names (and the emulator does not have)."""
SPIFFE_PREFIX = "spiffe://hospital.example/ns/imaging/sa/"
CLIENT_NAMES = ("admin", "editor", "viewer", "stranger", "gateway")
"""Client certificates issued by the test CA, each with SPIFFE ID SPIFFE_PREFIX + name. admin,
editor and viewer are granted in policies/data.json; stranger and gateway are not."""
RPC_TIMEOUT = 30.0
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
"""A fresh connection per channel: gRPC otherwise shares subchannels between equal channels."""


def spiffe_id(name: str) -> str:
    return SPIFFE_PREFIX + name


# --- processes -----------------------------------------------------------------------------------


Proxy = ProxyProcess
"""One `imaging-proxy serve` child process."""

SettingsDocument = Sections
"""A `serve --config` TOML document: section → setting → value."""

TEST_SETTINGS: SettingsDocument = {
    "watch": {
        "first_poll_seconds": 0.05,
        "initial_interval_seconds": 0.05,
        "max_interval_seconds": 0.2,
        "jitter": 0.0,
    },
    "opa": {"health_interval_seconds": 0.2},
    "budget": {"enabled": False},
}
"""Poll the emulator and OPA's health often, and no quota budgets (the emulator runs with
--no-quotas): tests wait less, the security behaviour is the same."""


def start_proxy(
    directory: Path,
    args: Sequence[str],
    config: SettingsDocument = TEST_SETTINGS,
    env: Mapping[str, str] | None = None,
) -> Proxy:
    """`imaging-proxy serve --port 0 --config <settings file> ARGS`, logging in `directory`."""
    return launch_proxy(directory, ["--port", "0", *args], config, env)


def start_opa(
    directory: Path, port: int, args: Sequence[str] = (), paths: Sequence[Path] = ()
) -> Child:
    """A real OPA server on 127.0.0.1:`port` loading `paths` (default policies/), without a
    decision log; ready when it accepts TCP connections (`args` may make it serve TLS)."""
    return servers.start_opa(
        folder(directory), port, paths, args, decision_log=False, http_health=False
    )


def write_seed_studies(directory: Path, count: int) -> list[Path]:
    """`count` studies of two series each (see `two_series_studies`), in `directory`."""
    return two_series_studies(count, directory)


def folder(path: Path) -> Path:
    """`path`, created if missing (child processes log into it)."""
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Backend:
    """The emulator and the OPA server every proxy of a stack shares."""

    emulator_url: str
    opa_url: str
    image_set_ids: tuple[str, ...]
    opa_log: Path


@contextmanager
def running_backend(directory: Path, image_sets: int) -> Iterator[Backend]:
    """OPA with policies/ and the emulator seeded with `image_sets` studies; stopped on exit."""
    spec = StackSpec(image_sets, seeds=two_series_studies, update_delay=0.05)
    with running_stack(spec, directory) as local:
        assert len(local.image_set_ids) == image_sets
        opa_log = local.children[0].log_path
        yield Backend(local.emulator_url, local.opa_url, local.image_set_ids, opa_log)


# --- the stack -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The series and instances of one seeded image set."""

    image_set_id: str
    study_uid: str
    series: Mapping[str, tuple[str, ...]]
    """Series UID → its SOP instance UIDs."""

    @property
    def pair_series(self) -> str:
        """The series with two instances."""
        return next(uid for uid, sops in self.series.items() if len(sops) == 2)

    @property
    def single_series(self) -> str:
        """The series with one instance."""
        return next(uid for uid, sops in self.series.items() if len(sops) == 1)


@dataclass
class SecureStack:
    """A running secured product: where everything is, its identities, and fresh image sets."""

    endpoint: str
    """The proxy requiring client certificates (mTLS) and accepting JWT bearer tokens."""
    backend: Backend
    pki: Pki
    keys: JwtKeys
    clients: Mapping[str, CertificateFiles]
    """Client certificates by name (CLIENT_NAMES, plus "no-spiffe" and "foreign")."""
    proxy_log: Path
    audit_path: Path
    """The proxy's audit trail (JSON lines)."""
    directory: Path
    _unused: list[str] = field(default_factory=list)

    def take_image_set(self) -> str:
        """An image set no other test has used (latest version "1")."""
        if not self._unused:
            raise RuntimeError("the secure stack ran out of fresh image sets; seed more")
        return self._unused.pop(0)

    def token(self, subject: str, roles: Sequence[str] = (), **claims: object) -> str:
        """A valid RS256 token for `subject` with `roles`; `claims` override the standard ones."""
        return make_token(self.keys.rsa, {**standard_claims(subject, roles), **claims})

    def requests(self) -> list[dict[str, Any]]:
        """The emulator's log of every API call it received."""
        return EmulatorAdmin(self.backend.emulator_url, timeout=5).requests()

    def update_calls(self, image_set_id: str) -> list[dict[str, Any]]:
        return EmulatorAdmin(self.backend.emulator_url, timeout=5).update_calls(image_set_id)

    def layout(self, image_set_id: str) -> Layout:
        document = image_set_metadata(self.backend.emulator_url, image_set_id)
        series = document["Study"]["Series"]
        return Layout(
            image_set_id,
            document["Study"]["DICOM"]["StudyInstanceUID"],
            {uid: tuple(body["Instances"]) for uid, body in series.items()},
        )


def image_set_metadata(emulator_url: str, image_set_id: str) -> Any:
    url = f"{emulator_url}/datastore/{DATASTORE_ID}/imageSet/{image_set_id}/getImageSetMetadata"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as response:
        raw = response.read()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def issue_clients(pki: Pki) -> dict[str, CertificateFiles]:
    clients = {name: pki.ca.issue_client(name, name, [spiffe_id(name)]) for name in CLIENT_NAMES}
    return clients | {"no-spiffe": pki.cn_client, "foreign": pki.foreign_client}


@contextmanager
def running_secure_stack(directory: Path, image_sets: int = 128) -> Iterator[SecureStack]:
    """The backend plus a proxy with mTLS + JWT at `--log-level debug`; stopped on exit."""
    pki, keys = write_pki(directory / "pki"), write_jwt_keys(directory / "jwt")
    clients = issue_clients(pki)
    with running_backend(directory, image_sets) as backend:
        proxy = start_proxy(
            directory / "proxy",
            [*identity_args(pki, keys), *backend_args(backend), "--log-level", "debug"],
        )
        try:
            yield SecureStack(
                endpoint=proxy.endpoint,
                backend=backend,
                pki=pki,
                keys=keys,
                clients=clients,
                proxy_log=proxy.log_path,
                audit_path=proxy.audit_path,
                directory=directory,
                _unused=list(backend.image_set_ids),
            )
        finally:
            proxy.child.stop()


def backend_args(backend: Backend) -> list[str]:
    return ["--opa-url", backend.opa_url, "--endpoint-url", backend.emulator_url]


# --- channels and credentials --------------------------------------------------------------------


def channel_credentials(
    pki: Pki, client: CertificateFiles | None, roots: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials trusting `roots` (default: the test CA), presenting `client` if given."""
    trusted = (roots or pki.ca.cert_path).read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted)
    key, cert = client.read()
    return grpc.ssl_channel_credentials(trusted, private_key=key, certificate_chain=cert)


def open_mtls_channel(stack: SecureStack, client: str) -> grpc.aio.Channel:
    """A channel to the mTLS proxy presenting the client certificate called `client`."""
    credentials = channel_credentials(stack.pki, stack.clients[client])
    return grpc.aio.secure_channel(stack.endpoint, credentials, CHANNEL_OPTIONS)


def open_tls_channel(stack: SecureStack, endpoint: str) -> grpc.aio.Channel:
    """A server-authenticated TLS channel without a client certificate (for JWT-only listeners)."""
    credentials = channel_credentials(stack.pki, None)
    return grpc.aio.secure_channel(endpoint, credentials, CHANNEL_OPTIONS)


def service_stub(channel: grpc.aio.Channel) -> pb_grpc.MetadataUpdateServiceAsyncStub:
    """The service stub over a grpc.aio channel (typed as mypy-protobuf's AsyncStub)."""
    return pb_grpc.MetadataUpdateServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Credentials:
    """One test caller: the client certificate it presents and the bearer token it sends, if any."""

    client: str
    """Client certificate name; JWT callers use "gateway", which no grant names."""
    token: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token) if self.token else ()
