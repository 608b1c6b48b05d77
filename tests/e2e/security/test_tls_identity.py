"""mTLS and JWT identity over a real grpc.aio server: principals, handshakes, rotation."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from service.core.config import IdentitySettings
from service.core.errors import Unauthenticated
from service.identity.callers import Authenticator
from service.transport.tls import server_credentials
from tests.support.pki import (
    ADMIN_SPIFFE_ID,
    ISSUER,
    CertificateAuthority,
    CertificateFiles,
    JwtKeys,
    Pki,
    client_credentials,
    identity_settings,
    make_token,
    standard_claims,
    write_jwt_keys,
    write_pki,
)

Context = grpc.aio.ServicerContext[bytes, bytes]
RPC_TIMEOUT = 10.0
# A fresh connection per channel: gRPC otherwise shares subchannels between equal channels.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class IdentityProbe:
    """A tiny service whose handlers authenticate the caller and answer with the principal."""

    authenticator: Authenticator
    calls: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "test.Identity",
            {
                "Who": grpc.unary_unary_rpc_method_handler(self.who),
                "Follow": grpc.unary_stream_rpc_method_handler(self.follow),
            },
        )

    async def who(self, request: bytes, context: Context) -> bytes:
        return (await self._identify(context)).encode()

    async def follow(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        yield (await self._identify(context)).encode()
        await self.release.wait()
        yield b"still here"

    async def _identify(self, context: Context) -> str:
        self.calls += 1
        try:
            caller = self.authenticator.authenticate(
                context.invocation_metadata(), context.auth_context()
            )
            return f"{caller.auth_method} {caller.principal}"
        except Unauthenticated as error:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
            raise


@asynccontextmanager
async def serving(settings: IdentitySettings) -> AsyncIterator[tuple[str, IdentityProbe]]:
    """A grpc.aio server with the proxy's listener credentials; yields (target, probe)."""
    probe = IdentityProbe(Authenticator.from_settings(settings))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([probe.handler()])
    credentials = server_credentials(settings)
    assert credentials is not None
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}", probe
    finally:
        await server.stop(None)


async def who(
    target: str,
    credentials: grpc.ChannelCredentials,
    metadata: Sequence[tuple[str, str]] = (),
) -> str:
    async with grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/test.Identity/Who"
        )
        reply = await call(b"", timeout=RPC_TIMEOUT, metadata=tuple(metadata))
    return reply.decode()


async def refused(target: str, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await who(target, credentials)
    code: grpc.StatusCode = raised.value.code()
    return code


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> JwtKeys:
    return write_jwt_keys(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="module")
def settings(pki: Pki, keys: JwtKeys) -> IdentitySettings:
    return identity_settings(pki, keys)


async def test_spiffe_client_is_identified(pki: Pki, settings: IdentitySettings) -> None:
    async with serving(settings) as (target, _):
        principal = await who(target, client_credentials(pki, pki.spiffe_client))
    assert principal == f"mtls {ADMIN_SPIFFE_ID}"


async def test_cn_client_only_with_fallback(pki: Pki, settings: IdentitySettings) -> None:
    async with serving(settings) as (target, _):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await who(target, client_credentials(pki, pki.cn_client))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no SPIFFE ID" in (raised.value.details() or "")
    fallback = dataclasses.replace(settings, spiffe_cn_fallback=True)
    async with serving(fallback) as (target, _):
        principal = await who(target, client_credentials(pki, pki.cn_client))
        assert principal == "mtls x509-cn:legacy-service"


@pytest.mark.parametrize("client", ["foreign_client", None])
async def test_foreign_or_missing_certificate_fails_the_handshake(
    pki: Pki, settings: IdentitySettings, client: str | None
) -> None:
    presented: CertificateFiles | None = getattr(pki, client) if client else None
    async with serving(settings) as (target, probe):
        assert await refused(target, client_credentials(pki, presented)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert probe.calls == 0  # refused by TLS, before any handler ran
        assert await who(target, client_credentials(pki, pki.spiffe_client))


async def test_bearer_token_over_mtls_names_the_caller(
    pki: Pki, keys: JwtKeys, settings: IdentitySettings
) -> None:
    token = make_token(keys.ec, standard_claims("end-user-7", roles=["admin"]))
    async with serving(settings) as (target, _):
        credentials = client_credentials(pki, pki.spiffe_client)
        principal = await who(target, credentials, [("authorization", f"Bearer {token}")])
    assert principal == f"jwt jwt:{ISSUER}#end-user-7"


async def test_jwt_over_server_only_tls(
    pki: Pki, keys: JwtKeys, settings: IdentitySettings
) -> None:
    tls_only = dataclasses.replace(settings, client_ca="")
    token = make_token(keys.rsa, standard_claims("svc-batch"))
    async with serving(tls_only) as (target, _):
        credentials = client_credentials(pki)
        assert await who(target, credentials, [("authorization", f"Bearer {token}")]) == (
            f"jwt jwt:{ISSUER}#svc-batch"
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await who(target, credentials)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rotated_files_apply_to_new_connections_without_dropping_streams(
    pki: Pki, settings: IdentitySettings, tmp_path: Path
) -> None:
    live = _copy_listener_files(pki, tmp_path / "live")
    rotating = dataclasses.replace(
        settings, tls_cert=str(live.cert), tls_key=str(live.key), client_ca=str(live.client_ca)
    )
    new_ca = CertificateAuthority.create(tmp_path / "next", "next-ca")
    next_client = new_ca.issue_client(
        "next-client", "next", ["spiffe://hospital.example/ns/a/sa/b"]
    )
    async with serving(rotating) as (target, probe):
        old_credentials = client_credentials(pki, pki.spiffe_client)
        async with grpc.aio.secure_channel(target, old_credentials, options=CHANNEL_OPTIONS) as old:
            follow: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = old.unary_stream(
                "/test.Identity/Follow"
            )
            stream = follow(b"", timeout=RPC_TIMEOUT)
            assert await stream.read() == f"mtls {ADMIN_SPIFFE_ID}".encode()

            _rotate(live, new_ca.issue_server("next-server"), new_ca.cert_path)
            assert await refused(target, old_credentials) == grpc.StatusCode.UNAVAILABLE
            next_credentials = _credentials(new_ca, next_client)
            principal = await who(target, next_credentials)
            assert principal == "mtls spiffe://hospital.example/ns/a/sa/b"

            probe.release.set()
            assert await stream.read() == b"still here"  # the old session outlived the rotation


async def test_half_written_rotation_keeps_serving_then_completes(
    pki: Pki, settings: IdentitySettings, tmp_path: Path
) -> None:
    live = _copy_listener_files(pki, tmp_path / "live")
    rotating = dataclasses.replace(
        settings, tls_cert=str(live.cert), tls_key=str(live.key), client_ca=str(live.client_ca)
    )
    new_ca = CertificateAuthority.create(tmp_path / "next", "next-ca")
    next_server = new_ca.issue_server("next-server")
    trusts_new_ca = grpc.ssl_channel_credentials(
        new_ca.cert_path.read_bytes(), *pki.spiffe_client.read()
    )
    async with serving(rotating) as (target, _):
        _replace(live.key, next_server.key.read_bytes())  # the key no longer matches the cert
        credentials = client_credentials(pki, pki.spiffe_client)
        assert await who(target, credentials) == f"mtls {ADMIN_SPIFFE_ID}"
        _replace(live.cert, next_server.cert.read_bytes())  # rotation complete
        assert await who(target, trusts_new_ca) == f"mtls {ADMIN_SPIFFE_ID}"


@dataclass(frozen=True)
class LiveFiles:
    cert: Path
    key: Path
    client_ca: Path


def _copy_listener_files(pki: Pki, directory: Path) -> LiveFiles:
    directory.mkdir()
    live = LiveFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    shutil.copy(pki.ca.cert_path, live.client_ca)
    return live


def _rotate(live: LiveFiles, server: CertificateFiles, client_ca: Path) -> None:
    _replace(live.key, server.key.read_bytes())
    _replace(live.cert, server.cert.read_bytes())
    _replace(live.client_ca, client_ca.read_bytes())


def _replace(path: Path, data: bytes) -> None:
    """Atomic replacement, as a secret mount or cert-manager would do it."""
    staging = path.with_suffix(".tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def _credentials(ca: CertificateAuthority, client: CertificateFiles) -> grpc.ChannelCredentials:
    key, cert = client.read()
    return grpc.ssl_channel_credentials(ca.cert_path.read_bytes(), key, cert)
