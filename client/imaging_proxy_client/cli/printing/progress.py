"""Progress of an update on stderr: one live status line on a terminal, plain lines otherwise.

Events carry states, positions and ids only, never attribute values, so everything here is safe
to show. `describe` is pure; `Progress` owns the writing and the elapsed-time clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

_CLEAR_LINE = "\r\x1b[2K"


def describe(event: metadata_pb2.UpdateEvent, now: float) -> str | None:
    """One event in words; None for heartbeats (they only keep the status line's clock going)."""
    kind = event.WhichOneof("event")
    if kind == "authorized":
        return f"authorized (decision {event.authorized.decision_id or '-'})"
    if kind == "queued":
        return _describe_queued(event.queued, now)
    if kind in ("submitted", "status", "finished"):
        state: metadata_pb2.ImageSetState = getattr(event, kind).state
        return f"{kind}: {_state_words(state)}"
    if kind == "cancelled":
        return f"cancelled by {event.cancelled.cancelled_by}: nothing was written"
    return _describe_approval(event, kind)


def _describe_approval(event: metadata_pb2.UpdateEvent, kind: str | None) -> str | None:
    if kind == "approval_required":
        asked = event.approval_required
        who = [f"role {r}" for r in asked.approver_roles] + list(asked.approver_principals)
        until = asked.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"awaiting approval: {asked.count} of {' or '.join(who)}, until {until} "
            f"(Ctrl-C leaves it waiting; watch-update re-attaches)"
        )
    if kind == "approved":
        given = event.approved
        return f"approved by {given.approved_by} ({given.approvals} of {given.count})"
    if kind == "rejected":
        return f"rejected by {event.rejected.rejected_by}: nothing was written"
    if kind == "expired":
        return "approval expired: nothing was written"
    return None


def _describe_queued(queued: metadata_pb2.Queued, now: float) -> str:
    text = f"queued: position {queued.position}"
    if queued.HasField("estimated_start"):
        start = queued.estimated_start.seconds + queued.estimated_start.nanos / 1e9
        text += f", estimated start in {max(0.0, start - now):.0f}s"
    return text


def _state_words(state: metadata_pb2.ImageSetState) -> str:
    words = f"{state.image_set_state}/{state.image_set_workflow_status or '-'}"
    if state.latest_version_id:
        words += f" (version {state.latest_version_id})"
    return words


def heartbeat_words(heartbeat: metadata_pb2.Heartbeat) -> str:
    return f"{heartbeat.image_set_state}/{heartbeat.image_set_workflow_status or '-'}"


def elapsed_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class Progress:
    """Writes progress for one invocation; `live` rewrites a single line (a terminal)."""

    def __init__(
        self,
        stream: IO[str],
        live: bool,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream
        self._live = live
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self._status = "connecting"
        self._operation_id = ""
        self._line_open = False

    def event(self, event: metadata_pb2.UpdateEvent) -> None:
        if event.operation_id and event.operation_id != self._operation_id:
            self._operation_id = event.operation_id
            self.note(f"operation {event.operation_id}")
        words = describe(event, self._wall())
        if event.WhichOneof("event") == "heartbeat":
            self._status = self._status.split(":")[0] + ": " + heartbeat_words(event.heartbeat)
            self._refresh()
            return
        if words is not None:
            self._status = words
            self._show(words)

    def note(self, text: str) -> None:
        """A line that stays (retries, re-attaching), also on a terminal."""
        self._clear()
        self._stream.write(f"[{self._elapsed()}] {text}\n")
        self._stream.flush()
        self._refresh()

    def tick(self) -> None:
        """Redraw the live line so its clock moves during silences."""
        self._refresh()

    def close(self) -> None:
        """End the live line with the last status, so the terminal keeps it."""
        if self._live and self._line_open:
            self._stream.write("\n")
            self._stream.flush()
            self._line_open = False

    def _show(self, words: str) -> None:
        if self._live:
            self._refresh()
        else:
            self._stream.write(f"[{self._elapsed()}] {words}\n")
            self._stream.flush()

    def _refresh(self) -> None:
        if not self._live:
            return
        self._stream.write(f"{_CLEAR_LINE}[{self._elapsed()}] {self._status}")
        self._stream.flush()
        self._line_open = True

    def _clear(self) -> None:
        if self._live and self._line_open:
            self._stream.write(_CLEAR_LINE)
            self._line_open = False

    def _elapsed(self) -> str:
        return elapsed_text(self._clock() - self._started)
