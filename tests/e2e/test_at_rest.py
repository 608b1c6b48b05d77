"""Patient data at rest: a document lives in the journal only until its submit is acknowledged.

Real processes: OPA, the emulator, redis-server and proxies journaling to SQLite (`data_dir`) or
Redis, in clear or sealed. The oracle is the bytes: every SQLite file (database and write-ahead
log) and every Redis key and value are searched for the document's unique value, plainly and in
the base64 the journal writes blobs in.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    dev,
    quota_stack,
    read_until,
    redis_server,
    stalled_updates,
    study_update,
    write_quota,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

WRITES_PER_SECOND = 5.0
EDITOR = dev("demo-editor")


@dataclass
class Journals:
    backend: QuotaStack
    redis_url: str
    work: Path
    proxies: dict[str, ProxyProcess] = field(default_factory=dict)

    def proxy(self, store: str, sealed: bool) -> ProxyProcess:
        """One proxy per (store, sealed), started on first use."""
        name = f"{store}-{'sealed' if sealed else 'clear'}"
        if name not in self.proxies:
            journal: dict[str, object] = {"key_prefix": name}
            if store == "sqlite":
                journal["data_dir"] = str(self.work / name / "journal")
            else:
                journal["url"] = self.redis_url
            if sealed:
                journal["encryption_keys"] = [f"k1:{base64.b64encode(os.urandom(32)).decode()}"]
            budget = {"update_rate": WRITES_PER_SECOND, "update_burst": 1.0}
            self.proxies[name] = self.backend.proxy(name, {"journal": journal, "budget": budget})
        return self.proxies[name]

    def stored(self, store: str, sealed: bool) -> bytes:
        """Every byte the journal holds: SQLite's files, or each of the proxy's Redis keys."""
        name = f"{store}-{'sealed' if sealed else 'clear'}"
        if store == "sqlite":
            files = sorted((self.work / name / "journal").glob("journal.sqlite3*"))
            assert files, "no journal files"
            return b"".join(path.read_bytes() for path in files)
        return "\n".join(redis_contents(self.redis_url, f"{name}:*")).encode()


def redis_contents(url: str, pattern: str) -> Iterator[str]:
    """Each key and value matching `pattern`, read by type (DUMP's encoding may compress)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        for key in client.scan_iter(match=pattern):
            yield str(key)
            kind = str(client.type(key))
            if kind == "string":
                yield str(client.get(key))
            elif kind == "hash":
                yield from (str(item) for pair in client.hgetall(key).items() for item in pair)
            elif kind == "set":
                yield from (str(member) for member in client.smembers(key))
            else:
                raise AssertionError(f"unexpected {kind} key in the journal")
    finally:
        client.close()


def forms(marker: str) -> list[bytes]:
    """The marker as is, and as every base64 alignment of it would show inside a longer blob."""
    raw = marker.encode()
    found = [raw]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        found.append(encoded[4 if offset else 0 : -4])
    return found


def holds(stored: bytes, marker: str) -> bool:
    return any(form in stored for form in forms(marker))


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journals]:
    work = tmp_path_factory.mktemp("at-rest")
    with (
        redis_server(work / "redis") as url,
        quota_stack(work, write_quota(WRITES_PER_SECOND, 1.0), image_sets=8) as backend,
    ):
        yield Journals(backend, url, work)


@pytest.fixture
def stalled(journals: Journals) -> Iterator[None]:
    with stalled_updates(journals.backend):
        yield


@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed"])
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_the_journal_keeps_a_document_only_until_its_submit_is_acknowledged(
    journals: Journals, store: str, sealed: bool, stalled: None
) -> None:
    proxy = journals.proxy(store, sealed)
    backend = journals.backend
    (image_set,) = backend.take(1)
    submitted_value, queued_value = (f"AT REST {uuid.uuid4().hex[:16].upper()}" for _ in "12")
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        first = stub.UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, submitted_value), metadata=EDITOR
        )
        await read_until(first, "submitted")
        second = stub.UpdateImageSetMetadata(  # waits behind the LOCKED image set
            study_update(backend.datastore_id, image_set, queued_value, version="2"),
            metadata=EDITOR,
        )
        await read_until(second, "queued")

        while_queued = journals.stored(store, sealed)
        assert not holds(while_queued, submitted_value)  # acknowledged: dropped at once
        assert holds(while_queued, queued_value) is not sealed  # kept to submit; sealed if keyed

        backend.admin("PUT", "faults", {})
        backend.admin("POST", "release-stalled", {})
        await asyncio.gather(read_until(first, "finished"), read_until(second, "finished"))

    after = journals.stored(store, sealed)
    assert after, "the journal is empty: nothing was searched"
    assert not holds(after, submitted_value) and not holds(after, queued_value)
