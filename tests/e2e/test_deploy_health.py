"""deploy/ run for real: make-certs.sh's PKI, deploy's TOML on temp paths, its probes answered.

`imaging-proxy serve` gets deploy/imaging-proxy.toml with only what a laptop must change (paths,
ports, the Redis and OPA addresses), then the compose healthcheck and the Kubernetes probes are
run as written against it, and the health port is shown to serve health and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.polling import eventually
from devstack.processes import free_port
from devstack.stack import StackSpec, running_stack
from tests.support.stack import require_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MAKE_CERTS = DEPLOY / "tls" / "make-certs.sh"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_ON_THE_HEALTH_PORT = (
    "/imaging.metadata.v1.MetadataUpdateService/EvaluateUpdate",
    "/imaging.metadata.v1.MetadataUpdateService/UpdateImageSetMetadata",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)


def make_certs(directory: Path) -> None:
    subprocess.run(["bash", str(MAKE_CERTS), str(directory)], check=True, capture_output=True)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    make_certs(directory)
    return directory


# --- the certificate script ---------------------------------------------------------------------


def test_make_certs_issues_server_and_spiffe_client_certificates_from_one_ca(certs: Path) -> None:
    ca = load_cert(certs / "ca.crt")
    server, client = load_cert(certs / "tls.crt"), load_cert(certs / "client.crt")
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    server_names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"imaging-proxy", "localhost"} <= set(server_names.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in server_names.get_values_for_type(x509.IPAddress)}
    assert _usages(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _spiffe_ids(client) <= _granted_everywhere(), "the client would hold no role"
    for key in ("ca.key", "tls.key", "client.key"):
        assert stat.S_IMODE((certs / key).stat().st_mode) == 0o600, key


def test_make_certs_again_keeps_the_ca_and_reissues_the_leaves(tmp_path: Path) -> None:
    make_certs(tmp_path)
    first = {name: (tmp_path / name).read_bytes() for name in ("ca.crt", "tls.crt", "client.crt")}
    make_certs(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == first["ca.crt"]
    assert (tmp_path / "tls.crt").read_bytes() != first["tls.crt"]
    load_cert(tmp_path / "client.crt").verify_directly_issued_by(load_cert(tmp_path / "ca.crt"))


def _usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _spiffe_ids(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.UniformResourceIdentifier))


def _granted_everywhere() -> set[str]:
    grants = json.loads((ROOT / "policies" / "data.json").read_text())["imaging"]["grants"]
    return {principal for principal, roles in grants["*"].items() if roles}


# --- deploy's settings, served ------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """`serve` on deploy's settings: the mTLS API port and the plaintext health port."""

    api: str
    health: str
    certs: Path
    datastore_id: str
    image_set_id: str


def deploy_settings(certs: Path, redis_url: str, health_port: int) -> dict[str, Any]:
    """deploy/imaging-proxy.toml with local ports and addresses; each TLS file is the one
    make-certs.sh wrote under the same name, so the names must agree."""
    settings = tomllib.loads((DEPLOY / "imaging-proxy.toml").read_text())
    identity = settings["identity"]
    for key in ("tls_cert", "tls_key", "client_ca"):
        identity[key] = str(certs / Path(identity[key]).name)
    server = settings["server"]
    server.update(host="127.0.0.1", health_port=health_port, metrics_port=free_port())
    settings["journal"]["url"] = redis_url
    return settings


@pytest.fixture(scope="module")
def deployed(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    require_redis_server()
    work = tmp_path_factory.mktemp("deploy")
    with running_stack(StackSpec(image_sets=1, redis=True), work) as local:
        health_port = free_port()
        settings = deploy_settings(certs, local.redis_url, health_port)
        # No identity flags: the mTLS of deploy's [identity] is the only way in.
        proxy = local.add_proxy(work / "proxy", settings=settings, identity=())
        yield Deployed(
            proxy.endpoint, f"127.0.0.1:{health_port}", certs, local.datastore_id, local.take()[0]
        )


@pytest.fixture(scope="module")
async def health_channel(deployed: Deployed) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(deployed.health) as channel:
        yield channel


def tls_credentials(certs: Path, client: bool) -> grpc.ChannelCredentials:
    roots = (certs / "ca.crt").read_bytes()
    if not client:
        return grpc.ssl_channel_credentials(roots)
    key, chain = (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes()
    return grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=chain)


async def check(channel: grpc.aio.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    return int(response.status)


async def ready(channel: grpc.aio.Channel) -> None:
    """Readiness needs OPA to have answered once: wait for it, as the orchestrator does."""
    await eventually(lambda: check(channel, "readiness"), within=30, until=SERVING.__eq__)


async def test_the_api_port_refuses_a_client_without_a_certificate(deployed: Deployed) -> None:
    credentials = tls_credentials(deployed.certs, client=False)
    async with grpc.aio.secure_channel(deployed.api, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(channel, "liveness")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_spiffe_client_certificate_is_let_in_and_granted(
    deployed: Deployed, health_channel: grpc.aio.Channel
) -> None:
    await ready(health_channel)
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}}
    request = pb.UpdateImageSetMetadataRequest(
        datastore_id=deployed.datastore_id,
        image_set_id=deployed.image_set_id,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
    )
    credentials = tls_credentials(deployed.certs, client=True)
    async with grpc.aio.secure_channel(deployed.api, credentials) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        evaluation = await stub.EvaluateUpdate(request, timeout=10)
    assert evaluation.decision.allow, evaluation.decision.reasons


async def test_the_cli_calls_it_with_the_client_certificate(
    deployed: Deployed, health_channel: grpc.aio.Channel
) -> None:
    await ready(health_channel)
    document = json.dumps({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}})
    argv = [sys.executable, "-m", "imaging_proxy_client.cli.main", "evaluate-update"]
    argv += [
        "--endpoint-url",
        f"https://{deployed.api}",
        "--ca-bundle",
        str(deployed.certs / "ca.crt"),
    ]
    argv += ["--client-cert", str(deployed.certs / "client.crt")]
    argv += ["--client-key", str(deployed.certs / "client.key")]
    argv += ["--datastore-id", deployed.datastore_id, "--image-set-id", deployed.image_set_id]
    argv += ["--latest-version-id", "1", "--query", "decision.allow"]
    argv += ["--cli-binary-format", "raw-in-base64-out"]
    argv += ["--update-image-set-metadata-updates"]
    argv += [json.dumps({"DICOMUpdates": {"updatableAttributes": document}})]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip()) == (0, "true"), result.stderr


async def test_the_compose_healthcheck_passes_as_written(
    deployed: Deployed, health_channel: grpc.aio.Channel
) -> None:
    await ready(health_channel)
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    command = compose["services"]["imaging-proxy"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    script = command[3].replace("127.0.0.1:8081", deployed.health)
    assert script != command[3], "the healthcheck no longer reads 127.0.0.1:8081"
    argv = [sys.executable, "-c", script]
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, env=os.environ)
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
async def test_the_kubernetes_probes_read_serving_in_plaintext(
    probe: str, health_channel: grpc.aio.Channel
) -> None:
    await ready(health_channel)
    assert await check(health_channel, _proxy_container()[probe]["grpc"]["service"]) == SERVING


@pytest.mark.parametrize("method", NOT_ON_THE_HEALTH_PORT, ids=lambda m: m.rsplit("/", 2)[1])
async def test_the_health_port_serves_nothing_but_health(
    method: str, health_channel: grpc.aio.Channel
) -> None:
    """Raw bytes in one unary call: it would be answered (OK or a decoding error) if served.
    (A bidi stream raced its write against the trailers-only refusal, and read INTERNAL.)"""
    unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = health_channel.unary_unary(method)
    call = unary(b"", timeout=5)
    assert await call.code() == grpc.StatusCode.UNIMPLEMENTED, await call.details()


def _proxy_container() -> dict[str, Any]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "imaging-proxy.yaml").read_text())
    deployment = next(
        d
        for d in documents
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "imaging-proxy"
    )
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return dict(next(c for c in containers if c["name"] == "imaging-proxy"))
