"""Hostile JWTs for the identity tests: unsigned and key-confusion tokens the proxy must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping

import jwt


def make_unsigned_token(claims: Mapping[str, object]) -> str:
    """An `alg: none` token (no signature), which the proxy must refuse."""
    return jwt.encode(dict(claims), "", algorithm="none")


def forge_hs256_token(secret: bytes, claims: Mapping[str, object], kid: str = "") -> str:
    """An HS256 token MACed with `secret`, e.g. a public key PEM: the key-confusion attack.

    Built by hand because PyJWT itself refuses PEM keys as HMAC secrets.
    """
    header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(dict(claims)))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
