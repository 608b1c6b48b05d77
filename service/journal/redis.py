"""Redis journal, shared by replicas: records, idempotency keys, in-flight image sets, leases.

Each replica holds a lease; when it lapses (or the replica leaves cleanly) another replica takes
its unfinished operations over. Every change of an operation is saved only by its owner (a
replica that lost the lease learns so on its next save), and its events travel on one pub/sub
channel per operation so any replica can stream any operation.

Records are stored as `codec.encode` makes them (sealed when keys are set; without their
document once submitted); the hash's `owner` and `state` fields, the idempotency key's SHA-256
and the pub/sub events (no document) stay in clear. The connection (TLS, ACL user) comes from
`service.journal.redis_client`; every call the journal answers goes through its `translated` edge,
so a Redis
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

from service.core.config import JournalSettings
from service.core.model import ImageSetKey, OperationRecord
from service.journal import redis_scripts as scripts
from service.journal.codec import RecordEncoder, at_rest, decode, decode_readable, is_stale
from service.journal.redis_client import blocking_redis, translated
from service.journal.sealing import Sealer

log = structlog.get_logger(__name__)

Lease = Literal["held", "lapsed", "lost"]
"""A renewal's verdict: still ours; lapsed (we may have been taken over: let go); or Redis lost
its data (write back what we hold)."""


def _text(value: bytes | str) -> str:
    """Replies are str (decode_responses=True); redis-py's types also allow bytes."""
    return value.decode() if isinstance(value, bytes) else value


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
        self._create = client.register_script(scripts.CREATE)
        self._save = client.register_script(scripts.SAVE)
        self._take_over = client.register_script(scripts.TAKE_OVER)
        self._release = client.register_script(scripts.RELEASE)
        self._adopt = client.register_script(scripts.ADOPT)
        self._renew = client.register_script(scripts.RENEW)
        self._restore = client.register_script(scripts.RESTORE)
        self._cancel = client.register_script(scripts.CANCEL)
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
        """Take a lease (a refused connection stops the start here); `service.operations.ownership`
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
            record.state,
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
    async def records(self) -> list[OperationRecord]:
        ids = [
            _text(name).removeprefix(self._key("op", ""))
            async for name in self._client.scan_iter(match=self._key("op", "*"), count=500)
        ]
        async with self._client.pipeline(transaction=False) as pipe:
            for operation_id in ids:
                pipe.hget(self._key("op", operation_id), "body")
            bodies = await pipe.execute()
        stored = [(i, _text(body)) for i, body in zip(ids, bodies, strict=True) if body]
        return decode_readable(stored, self._sealer)

    @translated("journal")
    async def cancel_queued(self, cancelled: OperationRecord) -> str:
        keys = [self._key("op", cancelled.id), self._key("unfinished")]
        retention_ms = int(self._settings.retention_seconds * 1000)
        body = self._encoder.encode(cancelled)
        self._encoder.forget(cancelled.id)  # this replica saves it no more
        held = await self._cancel(keys=keys, args=[cancelled.id, body, retention_ms])
        return _text(held)

    @translated("journal")
    async def transition(
        self, record: OperationRecord, expected: OperationRecord
    ) -> OperationRecord | None:
        """Optimistic: WATCH the record, compare, MULTI/EXEC; a change in between answers what
        the journal holds then. The owner and the epoch are left as they are: the owner's next
        save still passes its fence."""
        key = self._key("op", record.id)
        body = self._encoder.encode(record)
        self._encoder.forget(record.id)  # the owner's own saves encode it afresh
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                stored, epoch = await pipe.hmget(key, ["body", "epoch"])
                if not stored:
                    return None
                current = decode(_text(stored), record.id, self._sealer)
                current = replace(current, epoch=int(epoch or 0))  # kept beside the body
                if (current.state, current.seq) != (expected.state, expected.seq):
                    return current
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(key, mapping={"body": body, "state": record.state})
                if record.finished:
                    pipe.srem(self._key("unfinished"), record.id)
                    pipe.pexpire(key, int(self._settings.retention_seconds * 1000))
                await pipe.execute()
        except aioredis.WatchError:
            return await self.get(record.id)
        return replace(at_rest(record), epoch=current.epoch)

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
