"""The request log: one entry per API call received, read through the admin endpoint."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LoggedRequest:
    """One API call that reached the emulator (status 0: the connection was dropped)."""

    operation: str
    datastoreId: str | None  # named as in the JSON
    imageSetId: str | None
    status: int
    at: float
    error: str | None = None


class RequestLog:
    """Bounded, so a demo can run for days."""

    def __init__(self, limit: int = 100_000) -> None:
        self._entries: deque[LoggedRequest] = deque(maxlen=limit)

    def add(self, entry: LoggedRequest) -> None:
        self._entries.append(entry)

    def clear(self) -> None:
        self._entries.clear()

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self._entries]
