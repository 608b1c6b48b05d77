"""Redis connection: one client helper for the journal and the budgets; errors made domain errors.

`rediss://user:password@host:port/db` gives TLS and an ACL user (redis-py's URL handling;
`?ssl_ca_certs=/path/ca.pem` names the CA). `RedisError` is named here and in the Redis journal
only: past `translated`, callers see `ProxyError`s.

Reconnecting is redis-py's `Retry` (asyncio flavour): without one, redis-py 8 retries nothing, so
after a Redis restart the first command on every stale pooled socket would fail. Connection and
timeout errors (and a Redis still loading its AOF) are retried with exponential backoff and jitter
for about 0.75 s; every command and script the proxy sends is safe to send twice (the journal's
scripts find their own first run; the budget's bucket script sent twice spends one more slot,
which only ever slows calls down, never lets more through). Past that, `RedisUnavailable`
reaches the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.core.errors import Internal, RedisUnavailable

__all__ = ["RedisUnavailable", "blocking_redis", "translated"]

RETRIES = 4
"""Retries of one command: backoff 0.05, 0.1, 0.2, 0.4 s (each with jitter), about 0.75 s."""
HEALTH_CHECK_SECONDS = 5.0
"""An idle pooled connection is PINGed before use after this long (a stale socket is replaced)."""
SOCKET_TIMEOUT_SECONDS = 5.0
"""A command (or a connect) that gets no answer this long fails, and is retried."""


def blocking_redis(url: str) -> aioredis.Redis:
    """A client whose calls wait for a free connection instead of failing under a burst
    (redis-py's default pool raises "Too many connections"), and reconnect after a restart."""
    retry = Retry(EqualJitterBackoff(cap=1.0, base=0.05), RETRIES)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=50,
        timeout=5,
        decode_responses=True,
        retry=retry,
        retry_on_error=[BusyLoadingError, RedisConnectionError, RedisTimeoutError],
        health_check_interval=HEALTH_CHECK_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    return aioredis.Redis(connection_pool=pool)


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Redis's errors → domain errors (a block, or a coroutine function as a decorator).

    Messages name `what` and the error's type only: redis-py's text may echo the URL or a key.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:  # BusyLoadingError included
        raise RedisUnavailable(f"{what}: Redis unavailable ({type(exc).__name__})") from exc
    except RedisError as exc:  # a refused command (ACL, script): not worth a retry
        raise Internal(f"{what}: Redis refused a command ({type(exc).__name__})") from exc
