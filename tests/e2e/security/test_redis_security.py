"""Redis over TLS with an ACL user: the journal and the budgets connect with `rediss://user:…@`.

A real redis-server on a TLS port only (plain TCP off), its certificate from the test PKI, its
default user disabled and one ACL user allowed only the proxy's keys and channels.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from devstack import processes
from service.admission.budget import UPDATE, Budget
from service.core.config import BackendSettings, BudgetSettings, JournalSettings
from service.journal import open_journal
from service.journal.codec import at_rest
from service.journal.redis import RedisJournal
from service.journal.redis_client import RedisUnavailable
from service.observability.metrics import Metrics
from tests.support.pki import CertificateAuthority
from tests.support.stack import require_redis_server
from tests.unit.journal.test_journal import LOCKED, record

pytestmark = pytest.mark.redis

PREFIX = "secure-proxy"
USER, PASSWORD = "imaging-proxy", "s3cret-Pa55"


@dataclass(frozen=True)
class SecureRedis:
    port: int
    ca: Path

    def url(self, user: str = USER, password: str = PASSWORD, scheme: str = "rediss") -> str:
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    require_redis_server()
    work = tmp_path_factory.mktemp("redis-tls")
    ca = CertificateAuthority.create(work, "ca")
    server = ca.issue_server("redis")
    port = processes.free_port()
    argv = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    argv += ["--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key)]
    argv += ["--tls-ca-cert-file", str(ca.cert_path), "--tls-auth-clients", "no"]
    argv += ["--save", "", "--appendonly", "no", "--user", "default", "off"]
    # Only the proxy's own keys (~) and channels (&), and no administrative commands.
    argv += ["--user", USER, "on", f">{PASSWORD}", f"~{PREFIX}:*", f"&{PREFIX}:*"]
    argv += ["+@all", "-@dangerous"]
    child = processes.spawn("redis-tls", argv, work)
    try:
        processes.wait_until(lambda: _answers(port, ca.cert_path), child)
        yield SecureRedis(port, ca.cert_path)
    finally:
        child.stop()


def _answers(port: int, ca: Path) -> bool:
    client = redis.Redis(
        port=port, ssl=True, ssl_ca_certs=str(ca), username=USER, password=PASSWORD
    )
    with contextlib.closing(client):
        return bool(client.ping())


def settings(url: str) -> JournalSettings:
    return JournalSettings(url=url, key_prefix=PREFIX, lease_seconds=1.0)


async def test_the_journal_works_over_tls_as_an_acl_user(secure_redis: SecureRedis) -> None:
    async with open_journal(settings(secure_redis.url())) as journal:
        assert isinstance(journal, RedisJournal)
        created = await journal.create(record(f"op-{time.time_ns()}", key="k"))
        submitted = replace(created, state="submitted", seq=2, submitted=LOCKED)
        assert await journal.save(submitted)
        assert await journal.get(created.id) == at_rest(submitted)
        assert await journal.by_key("svc", "k") == at_rest(submitted)
        assert await journal.take_over() == []


async def test_the_budget_shares_its_buckets_over_tls(secure_redis: SecureRedis) -> None:
    url = secure_redis.url()
    async with Budget.open(BudgetSettings(), BackendSettings(), url, PREFIX, Metrics()) as budget:
        assert await budget.reserve(UPDATE) >= 0.0
    client = aioredis.Redis.from_url(url)
    async with client:
        assert [key async for key in client.scan_iter(match=f"{PREFIX}:budget:*")]


@pytest.mark.parametrize(
    ("url_of", "error"),
    [
        (lambda r: r.url(password="wrong"), redis.exceptions.AuthenticationError),
        (lambda r: r.url(user="default"), redis.exceptions.AuthenticationError),
        (lambda r: r.url(scheme="redis").split("?")[0], redis.exceptions.ConnectionError),
        (lambda r: r.url().split("?")[0], redis.exceptions.ConnectionError),  # CA not trusted
    ],
    ids=["wrong-password", "default-user", "no-tls", "unknown-ca"],
)
async def test_a_wrong_password_no_tls_or_an_untrusted_server_is_refused(
    secure_redis: SecureRedis, url_of: object, error: type[Exception]
) -> None:
    with pytest.raises(RedisUnavailable) as refused:  # a domain error, the driver's as its cause
        async with open_journal(settings(url_of(secure_redis))):  # type: ignore[operator]
            pass
    assert isinstance(refused.value.__cause__, error)


async def test_the_acl_user_cannot_touch_other_keys(secure_redis: SecureRedis) -> None:
    client = aioredis.Redis.from_url(secure_redis.url())
    async with client:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.set("someone-else:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.flushall()
