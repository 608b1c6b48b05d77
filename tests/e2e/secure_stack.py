"""The secured product as processes: real OPA, the emulator, `imaging-proxy serve` with mTLS + JWT.

`running_secure_stack` runs what a hospital would deploy: a proxy whose listener requires client
certificates from the test CA (SPIFFE IDs) and also accepts JWT bearer tokens (the token names the
caller when present), in front of a real OPA with `policies/` and the emulator. Fixtures wrapping
it live in `tests/e2e/security/conftest.py`; the processes, channels, credentials and polling
helpers here are shared by the security and the fuzz tests.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.cli import processes
from service.cli.demo import EMULATOR_AWS_ENV
from tests.support.pki import (
    AUDIENCE,
    ISSUER,
    CertificateFiles,
    JwtKeys,
    Pki,
    make_token,
    standard_claims,
    write_jwt_keys,
    write_pki,
)

T = TypeVar("T")

DATASTORE_ID = "12345678901234567890123456789012"
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


@dataclass(frozen=True)
class Proxy:
    """One `imaging-proxy serve` child process."""

    child: processes.Child
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.child.log_path


def toml_document(sections: SettingsDocument) -> str:
    """A TOML settings file from scalar values (all `serve --config` needs here)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            shown = str(value).lower() if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"


SettingsDocument = Mapping[str, Mapping[str, str | float | bool]]
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
    """`imaging-proxy serve --port 0 --config <directory>/proxy.toml ARGS`, logging there."""
    config_path = folder(directory) / "proxy.toml"
    config_path.write_text(toml_document(config))
    argv = ["--port", "0", "--config", str(config_path), *args]
    child, port = processes.start_proxy(directory, argv, {**EMULATOR_AWS_ENV, **(env or {})})
    return Proxy(child, port)


def start_opa(
    directory: Path, port: int, args: Sequence[str] = (), paths: Sequence[Path] = ()
) -> processes.Child:
    """A real OPA server on 127.0.0.1:`port` loading `paths` (default policies/); ready when it
    accepts TCP connections (an HTTP probe would need its TLS client settings)."""
    folder(directory)
    loaded = [str(path) for path in paths] or [str(processes.find_policies())]
    argv = [processes.find_opa(), "run", "--server", "--addr", f"127.0.0.1:{port}", *args]
    child = processes.spawn("opa", [*argv, *loaded], directory)
    processes.wait_until(lambda: _accepts(port), child)
    return child


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def write_seed_studies(directory: Path, count: int) -> list[Path]:
    """`count` studies, each one image set of two series: "A" with two instances, "B" with one.

    Two of each let tests remove a series or an instance and still leave a valid image set.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sample = dcmread(str(get_testdata_file("CT_small.dcm")))
    written = []
    for study in range(count):
        study_uid = generate_uid()
        for series, instances in (("A", 2), ("B", 1)):
            series_uid = generate_uid()
            for instance in range(instances):
                sample.StudyInstanceUID, sample.SeriesInstanceUID = study_uid, series_uid
                sample.SOPInstanceUID = sample.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                written.append(directory / f"study-{study:03d}-{series}{instance}.dcm")
                sample.save_as(written[-1])
    return written


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
    children: list[processes.Child] = []
    try:
        opa_port = processes.free_port()
        children.append(processes.start_opa(folder(directory / "opa"), opa_port))
        seeds = write_seed_studies(directory / "seed", image_sets)
        emulator, ready = processes.start_emulator(
            folder(directory / "emulator"),
            processes.free_port(),
            [
                *("--datastore-id", DATASTORE_ID, "--non-primary", "--no-quotas"),
                *("--update-delay", "0.05", f"--seed={directory / 'seed'}"),
            ],
        )
        children.append(emulator)
        assert len(ready["imageSetIds"]) == len(seeds) // 3
        yield Backend(
            emulator_url=ready["url"],
            opa_url=f"http://127.0.0.1:{opa_port}",
            image_set_ids=tuple(ready["imageSetIds"]),
            opa_log=children[0].log_path,
        )
    finally:
        for child in reversed(children):
            child.stop()


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
        return emulator_requests(self.backend.emulator_url)

    def update_calls(self, image_set_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests()
            if r["operation"] == "UpdateImageSetMetadata" and r["imageSetId"] == image_set_id
        ]

    def layout(self, image_set_id: str) -> Layout:
        document = image_set_metadata(self.backend.emulator_url, image_set_id)
        series = document["Study"]["Series"]
        return Layout(
            image_set_id,
            document["Study"]["DICOM"]["StudyInstanceUID"],
            {uid: tuple(body["Instances"]) for uid, body in series.items()},
        )


def emulator_requests(emulator_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{emulator_url}/_emulator/requests", timeout=5) as response:
        return list(json.load(response)["requests"])


def image_set_metadata(emulator_url: str, image_set_id: str) -> Any:
    url = f"{emulator_url}/datastore/{DATASTORE_ID}/imageSet/{image_set_id}/getImageSetMetadata"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as response:
        raw = response.read()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def issue_clients(pki: Pki) -> dict[str, CertificateFiles]:
    clients = {name: pki.ca.issue_client(name, name, [spiffe_id(name)]) for name in CLIENT_NAMES}
    return clients | {"no-spiffe": pki.cn_client, "foreign": pki.foreign_client}


def identity_args(pki: Pki, keys: JwtKeys, client_ca: bool = True) -> list[str]:
    """`serve` options for a TLS listener (mTLS when `client_ca`) that also accepts JWTs."""
    args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if client_ca:
        args += ["--client-ca", str(pki.ca.cert_path)]
    jwt = ["--jwt-jwks-file", str(keys.jwks_file), "--jwt-issuer", ISSUER]
    return [*args, *jwt, "--jwt-audience", AUDIENCE]


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


# --- polling -------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
    """Run `check` until it stops raising AssertionError; the last failure is raised after
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)
