"""Sealed journal records: AES-256-GCM round trips, key rotation by id, tampering and lost keys."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from service.core.config import JournalSettings
from service.journal import open_journal
from service.journal.codec import decode, encode
from service.journal.sealing import Sealer, UnreadableRecord
from tests.unit.journal.test_journal import record

MARKER = b"A^B"  # the patient name in test_journal.record()'s document


def key(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def test_a_sealed_record_round_trips_and_hides_the_document() -> None:
    sealer = Sealer.from_settings([key("k1")])
    original = record("op-1")
    body = encode(original, sealer)
    assert MARKER not in body.encode()
    assert json.loads(body).keys() == {"kid", "sealed"} and json.loads(body)["kid"] == "k1"
    assert decode(body, "op-1", sealer) == original
    assert encode(original, sealer) != body  # a fresh nonce for every seal


def test_rotation_the_first_key_seals_every_key_opens() -> None:
    old, new = key("2025"), key("2026")
    sealed_before = encode(record("op-1"), Sealer.from_settings([old]))
    rotated = Sealer.from_settings([new, old])
    assert decode(sealed_before, "op-1", rotated).id == "op-1"
    assert json.loads(encode(record("op-2"), rotated))["kid"] == "2026"


def test_a_record_sealed_with_a_key_no_longer_configured_fails_loudly() -> None:
    body = encode(record("op-1"), Sealer.from_settings([key("retired")]))
    for sealer in (Sealer.from_settings([key("current")]), Sealer({})):
        with pytest.raises(UnreadableRecord, match=r"key id 'retired'.*encryption_keys"):
            decode(body, "op-1", sealer)


def test_a_tampered_record_fails_authentication() -> None:
    sealer = Sealer.from_settings([key("k1")])
    envelope = json.loads(encode(record("op-1"), sealer))
    sealed = bytearray(base64.b64decode(envelope["sealed"]))
    sealed[-20] ^= 1
    envelope["sealed"] = base64.b64encode(sealed).decode()
    with pytest.raises(UnreadableRecord, match="fails authentication"):
        decode(json.dumps(envelope), "op-1", sealer)


def test_a_sealed_record_is_bound_to_its_operation_id() -> None:
    sealer = Sealer.from_settings([key("k1")])
    body = encode(record("op-1"), sealer)
    with pytest.raises(UnreadableRecord, match="another operation"):
        decode(body, "op-2", sealer)


def test_records_written_in_clear_stay_readable_once_keys_are_set() -> None:
    original = record("op-1")
    clear = encode(original, Sealer({}))
    assert decode(clear, "op-1", Sealer.from_settings([key("k1")])) == original


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ("no-colon", "expected"),
        ("bad id!:" + base64.b64encode(bytes(32)).decode(), "expected"),
        ("k1:not*base64", "not valid base64"),
        ("k1:" + base64.b64encode(bytes(16)).decode(), "16 bytes"),
    ],
)
def test_bad_keys_are_refused_naming_the_setting_never_the_key(entry: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as refused:
        Sealer.from_settings([key("good"), entry])
    message = str(refused.value)
    assert "journal.encryption_keys[1]" in message
    assert (entry.partition(":")[2] or entry) not in message  # the key material never shows


def test_a_key_id_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        Sealer.from_settings([key("k1"), key("k1")])


async def test_the_journal_refuses_to_open_with_a_bad_key(tmp_path: Path) -> None:
    settings = JournalSettings(data_dir=str(tmp_path), encryption_keys=("k1:short",))
    with pytest.raises(ValueError, match=r"journal\.encryption_keys"):
        async with open_journal(settings):
            pass


async def test_sqlite_stores_sealed_records_and_resumes_them(tmp_path: Path) -> None:
    settings = JournalSettings(data_dir=str(tmp_path), encryption_keys=(key("k1"),))
    async with open_journal(settings) as journal:
        await journal.create(record("op-queued"))
    assert not _file_holds(tmp_path, MARKER)
    async with open_journal(settings) as restarted:
        [resumed] = await restarted.take_over()
    assert resumed == replace(record("op-queued"), created_at=resumed.created_at)


async def test_an_unreadable_record_is_reported_and_kept_not_dropped(tmp_path: Path) -> None:
    lost = JournalSettings(data_dir=str(tmp_path), encryption_keys=(key("lost"),))
    async with open_journal(lost) as journal:
        await journal.create(record("op-lost"))
    current = replace(lost, encryption_keys=(key("current"),))
    async with open_journal(current) as restarted:
        await restarted.create(record("op-readable"))
    async with open_journal(current) as again:
        assert [r.id for r in await again.take_over()] == ["op-readable"]
        with pytest.raises(UnreadableRecord, match="key id 'lost'"):
            await again.get("op-lost")


def _file_holds(folder: Path, marker: bytes) -> bool:
    return any(marker in path.read_bytes() for path in folder.glob("journal.sqlite3*"))
