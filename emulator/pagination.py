"""nextToken paging for the List*/Search* calls: opaque tokens that encode an offset."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from emulator.exceptions import ValidationException

T = TypeVar("T")
DEFAULT_PAGE = 50


def page(
    items: Sequence[T], max_results: int | None, token: str | None, scope: str
) -> tuple[list[T], str | None]:
    """One page of `items` and the token for the next one (None on the last page)."""
    start = _decode(token, scope) if token else 0
    size = max_results or DEFAULT_PAGE
    end = start + size
    next_token = _encode(end, scope) if end < len(items) else None
    return list(items[start:end]), next_token


def _encode(offset: int, scope: str) -> str:
    return base64.urlsafe_b64encode(f"{scope}|{offset}".encode()).decode()


def _decode(token: str, scope: str) -> int:
    try:
        got_scope, offset = base64.urlsafe_b64decode(token.encode()).decode().rsplit("|", 1)
        if got_scope != scope:
            raise ValueError(scope)
        return int(offset)
    except ValueError:
        raise ValidationException("nextToken is not valid for this request") from None
