"""Sealing: journal records encrypted at rest with AES-256-GCM, keys rotated by key id.

A sealed record is `{"kid": <key id>, "sealed": <base64 of nonce + ciphertext>}`. The first
configured key seals; every configured key opens (so a key can be retired once the records it
sealed are gone). The associated data binds the ciphertext to its operation id: a sealed body
copied under another operation does not open. Nonces are random (96 bits): rotate a key well
before it has sealed 2**32 records.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.core.errors import Internal

SETTING = "journal.encryption_keys"
KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_AAD_PREFIX = b"imaging-proxy journal record\x00"


class UnreadableRecord(Internal):
    """A journal record this process cannot open (its key is not configured, or it was altered).

    Never skipped silently: the record stays in the journal as it is, and every reader says why.
    """

    reason = "JOURNAL_RECORD_UNREADABLE"


@dataclass(frozen=True)
class Sealer:
    """Seals with the first key, opens with any; no keys: records stay in clear."""

    keys: Mapping[str, AESGCM]
    """Key id → cipher, in configured order."""

    @classmethod
    def from_settings(cls, entries: Sequence[str]) -> Sealer:
        """Parse "<key id>:<base64 of 32 bytes>" entries; ValueError names the bad one."""
        keys: dict[str, AESGCM] = {}
        for index, entry in enumerate(entries):
            key_id, key = _parse(entry, f"{SETTING}[{index}]")
            if key_id in keys:
                raise ValueError(f"{SETTING}[{index}]: key id {key_id!r} is given twice")
            keys[key_id] = AESGCM(key)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def seal(self, operation_id: str, plaintext: bytes) -> dict[str, str]:
        key_id, cipher = next(iter(self.keys.items()))
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + cipher.encrypt(nonce, plaintext, _aad(operation_id))
        return {"kid": key_id, "sealed": base64.b64encode(sealed).decode()}

    def open(self, operation_id: str, envelope: Mapping[str, Any]) -> bytes:
        key_id = str(envelope.get("kid", ""))
        cipher = self.keys.get(key_id)
        if cipher is None:
            raise UnreadableRecord(
                f"journal record {operation_id} is sealed with key id {key_id!r}, which "
                f"{SETTING} does not hold: add that key back (after the current one)"
            )
        try:
            sealed = base64.b64decode(str(envelope.get("sealed", "")), validate=True)
            nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
            return cipher.decrypt(nonce, ciphertext, _aad(operation_id))
        except (InvalidTag, binascii.Error, ValueError):
            raise UnreadableRecord(
                f"journal record {operation_id} fails authentication under key id {key_id!r}: "
                "it was altered, or sealed for another operation"
            ) from None


def _aad(operation_id: str) -> bytes:
    return _AAD_PREFIX + operation_id.encode()


def _parse(entry: str, name: str) -> tuple[str, bytes]:
    """One key; error messages name the entry and its key id, never the key material."""
    key_id, colon, encoded = entry.partition(":")
    if not colon or not _KEY_ID.fullmatch(key_id):
        raise ValueError(
            f'{name}: expected "<key id>:<base64 of {KEY_BYTES} bytes>", '
            "the key id made of letters, digits, '.', '_' or '-'"
        )
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise ValueError(f"{name} (key id {key_id!r}): the key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"{name} (key id {key_id!r}): the key is {len(key)} bytes; "
            f"AES-256-GCM needs {KEY_BYTES} (e.g. `openssl rand -base64 32`)"
        )
    return key_id, key
