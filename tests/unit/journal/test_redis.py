"""The Redis edge: TLS/ACL URLs, and Redis's errors reaching callers as domain errors only."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis import exceptions

from devstack.processes import free_port
from service.admission.buckets import Quota
from service.admission.budget_redis import RedisStore
from service.core.config import BudgetSettings, JournalSettings
from service.core.errors import Internal, ProxyError
from service.journal import open_journal
from service.journal.redis_client import RedisUnavailable, blocking_redis, translated

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    "error",
    [
        exceptions.ConnectionError(f"Error connecting to rediss://u:{SECRET}@host"),
        exceptions.TimeoutError("Timeout reading from socket"),
        exceptions.AuthenticationError("invalid username-password pair"),
    ],
    ids=["connection", "timeout", "authentication"],
)
async def test_a_lost_or_refused_connection_is_unavailable(error: exceptions.RedisError) -> None:
    with pytest.raises(RedisUnavailable) as raised:
        async with translated("journal"):
            raise error
    assert raised.value.status == "UNAVAILABLE" and raised.value.reason == "REDIS_UNAVAILABLE"
    assert raised.value.__cause__ is error  # the driver's text stays in the traceback only
    assert raised.value.message == f"journal: Redis unavailable ({type(error).__name__})"
    assert SECRET not in raised.value.message


@pytest.mark.parametrize(
    "error",
    [exceptions.NoPermissionError("NOPERM"), exceptions.ResponseError("ERR in script")],
    ids=["acl", "script"],
)
async def test_a_refused_command_is_internal_not_a_retry(error: exceptions.RedisError) -> None:
    with pytest.raises(Internal) as raised:
        async with translated("budget"):
            raise error
    assert not isinstance(raised.value, RedisUnavailable)
    assert raised.value.message == f"budget: Redis refused a command ({type(error).__name__})"


async def test_as_a_decorator_it_translates_each_call_and_lets_other_errors_pass() -> None:
    @translated("journal")
    async def failing(error: Exception) -> None:
        raise error

    for _ in range(2):  # a fresh context for every call
        with pytest.raises(RedisUnavailable):
            await failing(exceptions.ConnectionError("down"))
    with pytest.raises(KeyError):
        await failing(KeyError("not Redis's"))


async def test_the_client_waits_for_a_connection_and_keeps_tls_and_the_acl_user() -> None:
    client = blocking_redis(f"rediss://proxy:{SECRET}@127.0.0.1:6390/2?ssl_ca_certs=/ca.pem")
    async with client:
        pool = client.connection_pool
        assert isinstance(pool, aioredis.BlockingConnectionPool)
        assert pool.max_connections == 50
        assert pool.connection_class is aioredis.SSLConnection
        kwargs = pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("proxy", SECRET, 2)
        assert kwargs["ssl_ca_certs"] == "/ca.pem" and kwargs["decode_responses"] is True


async def test_a_journal_without_its_redis_refuses_to_start_with_a_domain_error() -> None:
    settings = JournalSettings(url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnavailable) as raised:
        async with open_journal(settings):
            pass
    assert isinstance(raised.value.__cause__, exceptions.ConnectionError)


async def test_a_shared_budget_without_its_redis_raises_a_domain_error() -> None:
    client = blocking_redis(f"redis://127.0.0.1:{free_port()}/0")
    async with client:
        store = RedisStore(client, BudgetSettings(), "t")
        with pytest.raises(ProxyError) as raised:
            await store.reserve("UpdateImageSetMetadata", Quota(1.0, 1.0))
    assert isinstance(raised.value, RedisUnavailable)
