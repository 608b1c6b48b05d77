"""Redis connection: one client helper for the journal and the budgets; errors made domain errors.

`rediss://user:password@host:port/db` gives TLS and an ACL user (redis-py's URL handling;
`?ssl_ca_certs=/path/ca.pem` names the CA). `RedisError` is named here and in the Redis journal
only: past `translated`, callers see `ProxyError`s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import Internal, Unavailable


class RedisUnavailable(Unavailable):
    """Redis (the shared journal or budgets) did not answer in time, or refused the connection."""

    reason = "REDIS_UNAVAILABLE"


def blocking_redis(url: str) -> aioredis.Redis:
    """A client whose calls wait for a free connection instead of failing under a burst
    (redis-py's default pool raises "Too many connections"); an outage still times out."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=50, timeout=5, decode_responses=True
    )
    return aioredis.Redis(connection_pool=pool)


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Redis's errors → domain errors (a block, or a coroutine function as a decorator).

    Messages name `what` and the error's type only: redis-py's text may echo the URL or a key.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise RedisUnavailable(f"{what}: Redis unavailable ({type(exc).__name__})") from exc
    except RedisError as exc:  # a refused command (ACL, script): not worth a retry
        raise Internal(f"{what}: Redis refused a command ({type(exc).__name__})") from exc
