"""Redis journal, shared by replicas: records, idempotency keys, in-flight image sets, leases.

Each replica holds a lease; when it lapses (or the replica leaves cleanly) another replica takes
its unfinished operations over. Every change of an operation is saved only by its owner (a
replica that lost the lease learns so on its next save), and its events travel on one pub/sub
channel per operation so any replica can stream any operation.

Records are stored as `codec.encode` makes them (sealed when keys are set; without their
document once submitted); the hash's `owner` and `state` fields, the idempotency key's SHA-256
and the pub/sub events (no document) stay in clear. The connection (TLS, ACL user) comes from
`service.redis`; every call the journal answers goes through its `translated` edge, so a Redis
failure reaches callers as a domain error (`RedisUnavailable`, or `Internal` for a refused command).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, Literal, cast

import redis.asyncio as aioredis
import structlog

from service.config import JournalSettings
from service.journal.codec import RecordEncoder, at_rest, decode, decode_readable, is_stale
from service.journal.sealing import Sealer
from service.model import ImageSetKey, OperationRecord
from service.redis import blocking_redis, translated

log = structlog.get_logger(__name__)

Lease = Literal["held", "lapsed", "lost"]
"""A renewal's verdict: still ours; lapsed (we may have been taken over: let go); or Redis lost
its data (write back what we hold)."""


def _text(value: bytes | str) -> str:
    """Replies are str (decode_responses=True); redis-py's types also allow bytes."""
    return value.decode() if isinstance(value, bytes) else value


# Every script is safe to send twice (redis-py's Retry re-sends one whose answer was lost): the
# second run finds its own first run's work and answers the same (CREATE: the key already names
# this id; SAVE: same body; TAKE_OVER and ADOPT: the `taker` field holds this call's nonce;
# RENEW: PEXPIRE and SET NX are idempotent).

_CREATE_LUA = """
if #KEYS == 3 then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then
    local body = redis.call('HGET', ARGV[4] .. earlier, 'body')
    if body then return {earlier, body} end
  end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[5])
end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'owner', ARGV[3], 'state', 'queued', 'epoch', '1')
redis.call('SADD', KEYS[2], ARGV[1])
return {ARGV[1]}
"""

# 1: saved; 0: another owner or a newer epoch holds it (fenced); 2: the record was gone (Redis
# lost its data), so its owner wrote it back.
_SAVE_LUA = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
local answer = 1
if not held[1] then
  answer = 2
elseif held[1] ~= ARGV[3] or held[2] ~= ARGV[7] then
  return 0
end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'state', ARGV[6], 'owner', ARGV[3], 'epoch', ARGV[7])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return answer
"""

_TAKE_OVER_LUA = """
local taken = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local op = ARGV[2] .. id
  local held = redis.call('HMGET', op, 'owner', 'taker')
  local owner = held[1]
  if not owner then
    redis.call('SREM', KEYS[1], id)
  elseif held[2] == ARGV[4] or
      (owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner) == 0) then
    if held[2] ~= ARGV[4] then
      redis.call('HSET', op, 'owner', ARGV[1], 'taker', ARGV[4])
      redis.call('HINCRBY', op, 'epoch', 1)
    end
    table.insert(taken, id)
    table.insert(taken, redis.call('HGET', op, 'body'))
    table.insert(taken, redis.call('HGET', op, 'epoch'))
  end
end
return taken
"""

_ADOPT_LUA = """
local held = redis.call('HMGET', KEYS[1], 'state', 'taker')
if held[2] ~= ARGV[2] then
  if held[1] ~= 'unwatched' then return false end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', 'adopted', 'taker', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
end
return redis.call('HMGET', KEYS[1], 'body', 'epoch')
"""

_RELEASE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

_RESTORE_LUA = """
if #KEYS == 3 then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[8], 'NX') end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'owner', ARGV[3], 'state', ARGV[6], 'epoch', ARGV[7])
if ARGV[4] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
"""

# The lease and the generation marker in one round trip. 'lost': the marker is gone or another
# one (Redis came back empty); 'lapsed': our lease key expired (someone may have taken our
# operations over); 'held'. A fresh identity creates its key; an old one only extends it, so a
# lapse is never hidden by the renewal itself.
_RENEW_LUA = """
local generation = redis.call('GET', KEYS[2])
if not generation then
  redis.call('SET', KEYS[2], ARGV[3])
  generation = ARGV[3]
end
local held
if ARGV[4] == '1' then
  held = redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
else
  held = redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1
end
if generation ~= ARGV[2] then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  return {'lost', generation}
end
if not held then return {'lapsed', generation} end
return {'held', generation}
"""


class RedisJournal:
    """The journal shared by every replica; this one is `replica_id`."""

    shared = True

    def __init__(self, client: aioredis.Redis, settings: JournalSettings, sealer: Sealer) -> None:
        self._client = client
        self._settings = settings
        self._sealer = sealer
        self._encoder = RecordEncoder(sealer)
        self._prefix = settings.key_prefix
        self.replica_id = uuid.uuid4().hex[:12]
        self._fresh = True
        """The next renewal creates this identity's lease key (never re-creates a lapsed one)."""
        self._generation = ""
        """The generation marker this process last saw (empty: not joined yet)."""
        self._create = client.register_script(_CREATE_LUA)
        self._save = client.register_script(_SAVE_LUA)
        self._take_over = client.register_script(_TAKE_OVER_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._adopt = client.register_script(_ADOPT_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._restore = client.register_script(_RESTORE_LUA)
        self._bus = _Bus(client)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: JournalSettings, sealer: Sealer) -> AsyncIterator[RedisJournal]:
        async with contextlib.AsyncExitStack() as stack:
            client = blocking_redis(settings.url)
            stack.push_async_callback(client.aclose)
            journal = cls(client, settings, sealer)
            await journal._join()
            stack.push_async_callback(journal._leave)
            stack.push_async_callback(journal._stop)
            yield journal

    async def _join(self) -> None:
        """Take a lease (a refused connection stops the start here); `service.ownership`
        keeps it."""
        await self.renew()
        self._tasks = [asyncio.create_task(self._bus.send_forever(), name="journal-publish")]

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._bus.close()

    @translated("journal")
    async def _leave(self) -> None:
        """Leaving cleanly: the other replicas take our unfinished operations over at once."""
        await self._client.delete(self._key("replica", self.replica_id))

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _idempotency_key(self, principal: str, key: str) -> str:
        digest = hashlib.sha256(f"{principal}\0{key}".encode()).hexdigest()
        return self._key("key", digest)

    @translated("journal")
    async def renew(self) -> Lease:
        """Extend this replica's lease and check the generation marker, in one script.

        Lapsed: this process takes a new identity at once, so the operations of the old one
        are taken over (by any replica, this one included) under a newer epoch."""
        verdict = await self._renew_once()
        if verdict == "lapsed":
            self.rejoin()
            await self._renew_once()
        return verdict

    async def _renew_once(self) -> Lease:
        lease_ms = int(self._settings.lease_seconds * 1000)
        keys = [self._key("replica", self.replica_id), self._key("generation")]
        candidate = uuid.uuid4().hex
        fresh = "1" if self._fresh else "0"
        reply = await self._renew(keys=keys, args=[lease_ms, self._generation, candidate, fresh])
        verdict, generation = (_text(part) for part in reply)
        joined, self._generation, self._fresh = bool(self._generation), generation, False
        return cast(Lease, verdict) if joined else "held"

    def rejoin(self) -> None:
        """Let go of every operation held so far: a new identity, whose lease the next
        renewal creates (the old one lapses, and its operations are taken over)."""
        self.replica_id = uuid.uuid4().hex[:12]
        self._fresh = True

    @translated("journal")
    async def restore(self, record: OperationRecord) -> OperationRecord:
        """Write back an operation held in memory after Redis lost it (its key too), unless
        it is there already (its owner's own save may have written a newer state back)."""
        keys = [self._key("op", record.id), self._key("unfinished")]
        if record.request.idempotency_key:
            keys.append(self._idempotency_key(record.principal, record.request.idempotency_key))
        args: list[str | int] = [
            record.id,
            self._encoder.encode(record),
            self.replica_id,
            "1" if record.finished else "0",
            int(self._settings.retention_seconds * 1000),
            record.state,
            str(record.epoch),
            int(self._settings.idempotency_ttl_seconds * 1000),
        ]
        await self._restore(keys=keys, args=args)
        return record

    @translated("journal")
    async def ping(self) -> None:
        await self._client.ping()

    @translated("journal")
    async def create(self, record: OperationRecord) -> OperationRecord:
        keys = [self._key("op", record.id), self._key("unfinished")]
        if record.request.idempotency_key:
            keys.append(self._idempotency_key(record.principal, record.request.idempotency_key))
        ttl_ms = int(self._settings.idempotency_ttl_seconds * 1000)
        args: list[str | int] = [
            record.id,
            self._encoder.encode(record),
            self.replica_id,
            self._key("op", ""),
            ttl_ms,
        ]
        with self._encoder.forgotten_on_failure(record.id):
            reply = await self._create(keys=keys, args=args)
        if _text(reply[0]) == record.id:  # stored as sent (or by this call's first attempt)
            return replace(at_rest(record), epoch=1)
        self._encoder.forget(record.id)  # never stored: the earlier record stands for it
        return await self.get(_text(reply[0])) or decode(
            _text(reply[1]), _text(reply[0]), self._sealer
        )

    @translated("journal")
    async def save(self, record: OperationRecord) -> bool:
        keys = [self._key("op", record.id), self._key("unfinished")]
        retention_ms = int(self._settings.retention_seconds * 1000)
        finished = "1" if record.finished else "0"
        body = self._encoder.encode(record)
        args: list[str | int] = [record.id, body, self.replica_id, finished, retention_ms]
        args += [record.state, str(record.epoch)]
        with self._encoder.forgotten_on_failure(record.id):
            answer = int(await self._save(keys=keys, args=args))
        if answer == 0:  # another replica owns it now: this one never saves it again
            self._encoder.forget(record.id)
        elif answer == 2:
            log.error("journal_record_restored", operation_id=record.id, state=record.state)
        return answer != 0

    @translated("journal")
    async def get(self, operation_id: str) -> OperationRecord | None:
        body, epoch = await self._client.hmget(self._key("op", operation_id), ["body", "epoch"])
        if not body:
            return None
        return replace(decode(_text(body), operation_id, self._sealer), epoch=int(epoch or 0))

    @translated("journal")
    async def by_key(self, principal: str, key: str) -> OperationRecord | None:
        operation_id = await self._client.get(self._idempotency_key(principal, key))
        return await self.get(_text(operation_id)) if operation_id else None

    @translated("journal")
    async def forget_key(self, principal: str, key: str, operation_id: str) -> None:
        name = self._idempotency_key(principal, key)
        if _text(await self._client.get(name) or "") == operation_id:
            await self._client.delete(name)  # a race here only re-frees a dead key

    @translated("journal")
    async def take_over(self) -> list[OperationRecord]:
        nonce = uuid.uuid4().hex
        args = [self.replica_id, self._key("op", ""), self._key("replica", ""), nonce]
        taken = [
            _text(item) for item in await self._take_over(keys=[self._key("unfinished")], args=args)
        ]
        epochs = dict(zip(taken[::3], (int(e) for e in taken[2::3]), strict=True))
        records = decode_readable(zip(taken[::3], taken[1::3], strict=True), self._sealer)
        return [replace(record, epoch=epochs[record.id]) for record in records]

    @translated("journal")
    async def adopt(self, operation_id: str) -> OperationRecord | None:
        args = [self.replica_id, uuid.uuid4().hex]
        reply = await self._adopt(keys=[self._key("op", operation_id)], args=args)
        if not reply:
            return None
        body, epoch = (_text(part) for part in reply)
        return replace(decode(body, operation_id, self._sealer), epoch=int(epoch))

    @translated("journal")
    async def snapshot(self) -> Mapping[ImageSetKey, str]:
        held = await self._client.hgetall(self._key("inflight"))
        snapshot: dict[ImageSetKey, str] = {}
        for field, operation_id in held.items():
            datastore_id, _, image_set_id = _text(field).partition("/")
            snapshot[ImageSetKey(datastore_id, image_set_id)] = _text(operation_id)
        return snapshot

    @translated("journal")
    async def mark(self, key: ImageSetKey, operation_id: str) -> bool:
        field = "/".join(key)
        if await self._client.hsetnx(self._key("inflight"), field, operation_id):
            return True
        holder = await self._client.hget(self._key("inflight"), field)
        return holder is not None and _text(holder) == operation_id

    @translated("journal")
    async def stale(self, operation_id: str) -> bool:
        return is_stale(await self.get(operation_id))

    @translated("journal")
    async def release(self, key: ImageSetKey, operation_id: str) -> None:
        await self._release(keys=[self._key("inflight")], args=["/".join(key), operation_id])

    def publish(self, operation_id: str, event: Mapping[str, Any]) -> None:
        self._bus.publish(self._key("events", operation_id), json.dumps(event))

    def subscribe(
        self, operation_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]:
        return self._bus.subscribe(self._key("events", operation_id))


class _Bus:
    """One pub/sub connection per process: publishes in order, fans received events out."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    def publish(self, channel: str, data: str) -> None:
        self._outbox.put_nowait((channel, data))

    async def send_forever(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
                    await pipe.execute()
            except aioredis.RedisError as exc:
                log.warning("event_publish_failed", events=len(batch), error=type(exc).__name__)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        listeners = self._listeners.setdefault(channel, set())
        listeners.add(queue)
        try:  # a failed SUBSCRIBE leaves no listener behind (the next one subscribes again)
            if len(listeners) == 1:
                async with translated("journal"):
                    await self._pubsub.subscribe(channel)
            if self._reader is None:
                self._reader = asyncio.create_task(self._read_forever(), name="journal-subscribe")
            yield queue
        finally:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[channel]
                with contextlib.suppress(aioredis.RedisError):
                    await self._pubsub.unsubscribe(channel)

    async def _read_forever(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except aioredis.RedisError as exc:
                log.warning("event_subscribe_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            for queue in self._listeners.get(_text(message["channel"]), ()):
                queue.put_nowait(json.loads(message["data"]))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
