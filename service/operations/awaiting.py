"""Awaiting approval: an operation that holds nothing (no queue place, no write budget) until its
approvers decide, or its approval expires.

Approvers change the journal record themselves, on whichever replica they call
(service/operations/approvals.py), then nudge the operation's owner; the owner's task reads the
record again and tells its streams what happened (`approved`, then `authorized`; or the end). A
nudge that goes missing (another replica's word lost) is made up for by a read every
`POLL_SECONDS`.
The owner itself only expires the approval. Every change is a `Journal.transition`: it lands
only on the record its writer read, so an approval, a rejection and an expiry cannot cross.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

from service.core.errors import Internal
from service.core.model import OperationRecord
from service.journal import Journal
from service.operations.events import (
    Approved,
    Authorized,
    Cancelled,
    Expired,
    Item,
    Rejected,
    error_from,
)
from service.operations.operation import Operation

POLL_SECONDS = 30.0

Emit = Callable[[Operation, Item], None]


async def until_decided(operation: Operation, journal: Journal, emit: Emit) -> None:
    """Return once the operation may queue (approved, decided again, its image set unchanged)
    or has ended (rejected, expired, refused after approval, cancelled), its events told."""
    while operation.record.state == "awaiting_approval":
        approval = operation.record.approval
        assert approval is not None
        remaining = approval.expires_at - time.time()
        if remaining <= 0:
            expired = replace(operation.record, seq=operation.seq + 1, state="expired")
            caught_up(operation, await journal.transition(expired, operation.record), emit)
            continue
        operation.nudged.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, POLL_SECONDS)):
                await operation.nudged.wait()
        caught_up(operation, await journal.get(operation.id), emit)


def caught_up(operation: Operation, stored: OperationRecord | None, emit: Emit) -> None:
    """Take on the journal's newer record and tell its streams what changed."""
    if stored is None:
        raise Internal(f"operation {operation.id} is no longer in the journal")
    before = operation.record
    operation.record = stored
    for item in news(before, stored):
        emit(operation, item)
    operation.seq = max(operation.seq, stored.seq)


def news(before: OperationRecord, after: OperationRecord) -> list[Item]:
    """The events between two records of an operation awaiting approval (pure)."""
    now, op = time.time(), after.id
    approval = after.approval
    if approval is None:
        return []
    given = approval.approved_by
    seen = len(before.approval.approved_by) if before.approval else 0
    items: list[Item] = [
        Approved(op, now, by, number, approval.count)
        for number, by in enumerate(given[seen:], seen + 1)
    ]
    ended: dict[str, Item] = {
        "rejected": Rejected(op, now, approval.rejected_by),
        "expired": Expired(op, approval.expires_at),
        "cancelled": Cancelled(op, now, after.cancelled_by),
    }
    if after.state in ended:
        items.append(ended[after.state])
    elif after.error is not None:
        items.append(error_from(after.error))
    elif after.state != "awaiting_approval":
        items.append(Authorized(op, now, after.decision))
    return items
