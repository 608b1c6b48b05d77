"""Issue 7, transport security: the mTLS listener through the product, and TLS from proxy to OPA.

The identity unit and handshake details (rotation, CN fallback) are covered in
tests/e2e/security/test_tls_identity.py; here the whole product runs: `imaging-proxy serve`, real
OPA, the emulator.

TLS to OPA: the proxy trusts an internal CA through `[opa] ca_file` (for OPA alone) or, without
it, through the process's roots (OpenSSL's `SSL_CERT_FILE`). The tests prove both, that a wrong
trust store fails closed, and that OPA's client-certificate authentication works with
`[opa] client_cert`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from devstack import processes
from service.transport.health import LIVENESS, READINESS
from tests.e2e.secure_stack import (
    RPC_TIMEOUT,
    TEST_SETTINGS,
    Proxy,
    SecureStack,
    SettingsDocument,
    backend_args,
    bearer,
    channel_credentials,
    eventually,
    identity_args,
    image_set_metadata,
    open_tls_channel,
    service_stub,
    start_opa,
    start_proxy,
)
from tests.e2e.security.calls import (
    NOT_SERVING,
    SERVING,
    Stubs,
    assert_policy_unavailable,
    assert_updated,
    dev_allows,
    dev_refusal,
    events_of,
    health_becomes,
    patient,
    refusal,
    serving_status,
    study,
    update,
)
from tests.support.pki import ISSUER, CertificateFiles

pytestmark = pytest.mark.e2e


# --- the mTLS listener ---------------------------------------------------------------------------


async def test_an_mtls_caller_updates_end_to_end(secure_stack: SecureStack, stubs: Stubs) -> None:
    image_set = secure_stack.take_image_set()
    request = update(image_set, patient({"PatientName": "MTLS^END^TO^END"}))

    events = await events_of(
        stubs.service("admin").UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT)
    )

    assert_updated(events)
    stored = image_set_metadata(secure_stack.backend.emulator_url, image_set)
    assert stored["Patient"]["DICOM"]["PatientName"] == "MTLS^END^TO^END"
    assert await serving_status(stubs.channel("admin")) == SERVING


@pytest.mark.parametrize("trust", ["plaintext", "foreign_roots"])
async def test_a_client_that_cannot_verify_the_server_gets_nowhere(
    secure_stack: SecureStack, trust: str
) -> None:
    image_set = secure_stack.take_image_set()
    if trust == "plaintext":
        channel = grpc.aio.insecure_channel(secure_stack.endpoint)
    else:
        roots = secure_stack.pki.foreign_ca.cert_path
        credentials = channel_credentials(
            secure_stack.pki, secure_stack.clients["admin"], roots=roots
        )
        channel = grpc.aio.secure_channel(secure_stack.endpoint, credentials)
    async with channel:
        stub = service_stub(channel)
        request = update(image_set, study({"StudyDescription": "X"}))
        refused = await refusal(stub.UpdateImageSetMetadata(request, timeout=RPC_TIMEOUT))

    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert secure_stack.update_calls(image_set) == []


async def test_health_is_behind_mtls_too(secure_stack: SecureStack) -> None:
    async with open_tls_channel(secure_stack, secure_stack.endpoint) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await serving_status(channel)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def probed_proxy(secure_stack: SecureStack) -> Iterator[tuple[Proxy, int]]:
    """An mTLS + JWT proxy like the secure stack's, with a plaintext health port for probes."""
    health_port = processes.free_port()
    config: SettingsDocument = {**TEST_SETTINGS, "server": {"health_port": health_port}}
    args = [
        *identity_args(secure_stack.pki, secure_stack.keys),
        *backend_args(secure_stack.backend),
    ]
    proxy = start_proxy(secure_stack.directory / "probed-proxy", args, config)
    yield proxy, health_port
    proxy.child.stop()


async def test_probes_read_health_in_plaintext_on_the_health_port_and_nothing_else(
    secure_stack: SecureStack, probed_proxy: tuple[Proxy, int]
) -> None:
    proxy, health_port = probed_proxy
    async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        for name in ("", LIVENESS):
            assert await serving_status(channel, name) == SERVING
        await eventually(lambda: _reads(channel, READINESS, SERVING))
        request = update(secure_stack.take_image_set(), study({"StudyDescription": "X"}))
        refused = await refusal(service_stub(channel).EvaluateUpdate(request, timeout=RPC_TIMEOUT))

    assert refused.code == grpc.StatusCode.UNIMPLEMENTED  # no update API on the probe port
    async with grpc.aio.insecure_channel(proxy.endpoint) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await serving_status(plaintext)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # the main port still needs mTLS


async def _reads(channel: grpc.aio.Channel, name: str, status: int) -> None:
    assert await serving_status(channel, name) == status


async def test_a_certificate_without_a_spiffe_id_is_unauthenticated(
    secure_stack: SecureStack, stubs: Stubs
) -> None:
    image_set = secure_stack.take_image_set()

    refused = await refusal(
        stubs.service("no-spiffe").UpdateImageSetMetadata(
            update(image_set, study({"StudyDescription": "X"})), timeout=RPC_TIMEOUT
        )
    )

    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert "SPIFFE" in refused.message
    assert secure_stack.update_calls(image_set) == []


async def test_a_jwt_caller_updates_over_a_server_only_tls_listener(
    secure_stack: SecureStack, jwt_listener: Proxy
) -> None:
    image_set = secure_stack.take_image_set()
    token = secure_stack.token("svc-jwt-only", ["metadata-editor"])

    async with open_tls_channel(secure_stack, jwt_listener.endpoint) as channel:
        stub = service_stub(channel)
        request = update(image_set, study({"StudyDescription": "OVER TLS WITH A TOKEN"}))
        call = stub.UpdateImageSetMetadata(request, metadata=bearer(token), timeout=RPC_TIMEOUT)
        events = await events_of(call)

    assert_updated(events)
    audit = [
        json.loads(line)
        for line in jwt_listener.audit_path.read_text().splitlines()
        if image_set in line
    ]
    principal = f"jwt:{ISSUER}#svc-jwt-only"
    events = [(a["event"], a["principal"], a["auth_method"]) for a in audit]
    assert events == [(event, principal, "jwt") for event in ("decision", "submit", "finish")]


# --- TLS from the proxy to OPA -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsOpa:
    """OPA serving TLS and requiring client certificates, and proxies with different trust."""

    trusting: Proxy
    """SSL_CERT_FILE = the test CA, with a client certificate for OPA."""
    ca_file: Proxy
    """[opa] ca_file = the test CA while SSL_CERT_FILE names a foreign one: the setting wins."""
    wrong_roots: Proxy
    """SSL_CERT_FILE = a foreign CA: OPA's certificate cannot be verified."""
    no_client_certificate: Proxy
    """Trusts OPA, but presents no client certificate: OPA refuses it."""


def opa_config(
    url: str, client: CertificateFiles | None = None, ca_file: Path | None = None
) -> SettingsDocument:
    """The test settings with OPA at `url`, presenting `client` to it and trusting `ca_file`."""
    opa: dict[str, str | float | bool] = {**TEST_SETTINGS["opa"], "url": url}
    if client is not None:
        opa |= {"client_cert": str(client.cert), "client_key": str(client.key)}
    if ca_file is not None:
        opa |= {"ca_file": str(ca_file)}
    return {**TEST_SETTINGS, "opa": opa}


@pytest.fixture(scope="module")
def tls_opa(secure_stack: SecureStack) -> Iterator[TlsOpa]:
    pki, base = secure_stack.pki, secure_stack.directory / "tls-opa"
    port = processes.free_port()
    tls = ["--tls-cert-file", str(pki.server.cert), "--tls-private-key-file", str(pki.server.key)]
    tls += ["--authentication", "tls", "--tls-ca-cert-file", str(pki.ca.cert_path)]
    opa = start_opa(base / "opa", port, tls)
    client = pki.ca.issue_client("proxy-to-opa", "imaging-proxy")
    url = f"https://127.0.0.1:{port}"
    args = ["--insecure-dev-identity", "--endpoint-url", secure_stack.backend.emulator_url]
    started: list[Proxy] = []

    def proxy(name: str, config: SettingsDocument, roots: Path) -> Proxy:
        started.append(start_proxy(base / name, args, config, {"SSL_CERT_FILE": str(roots)}))
        return started[-1]

    try:
        with_client = opa_config(url, client)
        yield TlsOpa(
            trusting=proxy("trusting", with_client, pki.ca.cert_path),
            ca_file=proxy(
                "ca-file", opa_config(url, client, pki.ca.cert_path), pki.foreign_ca.cert_path
            ),
            wrong_roots=proxy("wrong-roots", with_client, pki.foreign_ca.cert_path),
            no_client_certificate=proxy("no-client", opa_config(url), pki.ca.cert_path),
        )
    finally:
        for child in [*(p.child for p in started), opa]:
            child.stop()


@pytest.mark.parametrize("case", ["trusting", "ca_file"])
async def test_the_proxy_trusts_opas_internal_ca_by_setting_or_by_ssl_cert_file(
    tls_opa: TlsOpa, case: str
) -> None:
    proxy: Proxy = getattr(tls_opa, case)
    assert await dev_allows(proxy)
    await health_becomes(proxy, SERVING, READINESS)  # GET /health over the same TLS


@pytest.mark.parametrize("case", ["wrong_roots", "no_client_certificate"])
async def test_tls_to_opa_that_fails_to_verify_fails_closed(tls_opa: TlsOpa, case: str) -> None:
    proxy: Proxy = getattr(tls_opa, case)

    refused = await dev_refusal(proxy)

    assert_policy_unavailable(refused)
    await health_becomes(proxy, NOT_SERVING, READINESS)
    await health_becomes(proxy, SERVING, LIVENESS)  # OPA out of reach never restarts the proxy
