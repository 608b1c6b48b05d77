"""Steering: list, inspect and cancel operations. The owner always may; whether anyone else may
is the policy's to say (`data.imaging.operations.decision`, policies/imaging/operations.rego).

A cancel takes back an operation still `queued`: the runner that runs it stops it where it
waits (service/operations/runner.py); one run by another replica is cancelled in the journal,
atomically
against its owner's next step, and the owner is told on the `CANCELS` channel (missing the word,
it learns on its next save, which fails). Either way nothing is written to HealthImaging and every
stream of the operation ends with `cancelled`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from dataclasses import replace
from typing import Any, get_args

import structlog

from service.core.errors import (
    FieldViolation,
    InvalidArgument,
    NotCancellable,
    PermissionDenied,
    PolicyUnavailable,
    ProxyError,
)
from service.core.model import CANCELLABLE, Caller, OperationQuery, OperationRecord, State
from service.journal import CANCELS, Journal, hear_forever
from service.observability import audit
from service.observability.metrics import Metrics
from service.operations.events import Cancelled, to_payload
from service.operations.runner import Runner
from service.policy.decisions import PolicyClient

log = structlog.get_logger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000
STATES: frozenset[str] = frozenset(get_args(State))


class Steering:
    """ListOperations, GetOperation and CancelUpdate, with protobuf-free values."""

    def __init__(
        self, policy: PolicyClient, runner: Runner, journal: Journal, metrics: Metrics
    ) -> None:
        self._policy = policy
        self._runner = runner
        self._journal = journal
        self._metrics = metrics

    async def get(self, caller: Caller, operation_id: str) -> OperationRecord:
        record = await self._runner.lookup(operation_id)
        await may_act_on(self._policy, self._metrics, caller, "get", record)
        return record

    async def list(
        self, caller: Caller, query: OperationQuery
    ) -> tuple[list[OperationRecord], str]:
        """One page of the operations matching `query` that the caller may see, oldest first,
        and the token of the next page ("" on the last). Without a principal filter, a caller
        the policy does not let list others' sees its own."""
        size, after = _checked(query)
        if query.principal != caller.principal:
            try:
                decision = await self._policy.permits(
                    caller, "list", query.datastore_id, {"filter": _filter(query)}
                )
            except PolicyUnavailable as error:
                self._metrics.decisions.labels("unavailable", error.cause).inc()
                audit.unavailable(caller, query.datastore_id, "", "ListOperations", error.cause)
                raise
            outcome = "allowed" if decision.allow else "denied"
            self._metrics.decisions.labels(outcome, "policy").inc()
            if not decision.allow and query.principal:
                raise denied("list", decision.reasons, decision.decision_id)
            if not decision.allow:
                query = replace(query, principal=caller.principal)
        records = [r for r in await self._journal.records() if _matches(r, query)]
        return page(records, size, after)

    async def cancel(self, caller: Caller, operation_id: str) -> OperationRecord:
        record = await self._runner.lookup(operation_id)
        await may_act_on(self._policy, self._metrics, caller, "cancel", record)
        if record.state == "cancelled":  # a retried cancel: the same answer
            return record
        if record.state not in CANCELLABLE:
            raise NotCancellable(record.id, record.state)
        cancelled = await self._cancel_here(operation_id, caller.principal)
        if cancelled is None:  # run by another replica (or, after a crash, by nobody yet)
            cancelled = await self._cancel_elsewhere(record, caller.principal)
        audit.cancelled(caller, cancelled)
        return cancelled

    async def _cancel_here(self, operation_id: str, by: str) -> OperationRecord | None:
        """Take back a queued operation this process runs (None: it runs elsewhere, or
        nowhere): its task stops where it waits, before any send, and ends it `cancelled`
        (service/operations/operation.py's `end_cancelled`)."""
        operation = self._runner.operation(operation_id)
        if operation is None or operation.task is None:
            return None
        if operation.record.state not in CANCELLABLE:
            raise NotCancellable(operation_id, operation.record.state)
        operation.cancelled_by = by
        operation.task.cancel()
        await asyncio.wait([operation.task])
        return operation.record

    async def _cancel_elsewhere(self, record: OperationRecord, by: str) -> OperationRecord:
        cancelled = replace(record, seq=record.seq + 1, state="cancelled", cancelled_by=by)
        held = await self._journal.cancel_queued(cancelled)
        if held not in CANCELLABLE:
            raise NotCancellable(record.id, held or "gone")
        if self._journal.shared:
            told = to_payload(cancelled.seq, Cancelled(record.id, time.time(), by))
            self._journal.publish(record.id, {**told, "epoch": record.epoch})
            self._journal.publish(CANCELS, {"operation_id": record.id, "cancelled_by": by})
        return cancelled

    async def hear_cancels_forever(self) -> None:
        """Several replicas: stop at once the operations of ours that another one cancelled (a
        later save tells the owner anyway)."""
        cancelled = self._cancelled_elsewhere
        await hear_forever(self._journal, CANCELS, cancelled, "cancel_channel_failed")

    async def _cancelled_elsewhere(self, word: dict[str, Any]) -> None:
        with contextlib.suppress(ProxyError):  # past its queue: it goes on
            await self._cancel_here(word["operation_id"], word["cancelled_by"])


RPC_OF = {"watch": "WatchUpdate", "get": "GetOperation", "cancel": "CancelUpdate"}


async def may_act_on(
    policy: PolicyClient, metrics: Metrics, caller: Caller, action: str, record: OperationRecord
) -> None:
    """The owner always may; anyone else as `data.imaging.operations.decision` says (audited,
    counted; OPA without an answer refuses, audited too)."""
    if caller.principal == record.principal:
        return
    request = record.request
    facts = {"operation": operation_facts(record)}
    rpc = RPC_OF[action]
    try:
        decision = await policy.permits(caller, action, request.datastore_id, facts)
    except PolicyUnavailable as error:
        metrics.decisions.labels("unavailable", error.cause).inc()
        audit.unavailable(caller, request.datastore_id, request.image_set_id, rpc, error.cause)
        raise
    metrics.decisions.labels("allowed" if decision.allow else "denied", "policy").inc()
    audit.access_decided(caller, record, decision, rpc)
    if not decision.allow:
        raise denied(action, decision.reasons, decision.decision_id)


def operation_facts(record: OperationRecord) -> dict[str, Any]:
    """What the policy sees of the operation someone other than its owner acts on."""
    request = record.request
    return {
        "principal": record.principal,
        "datastore_id": request.datastore_id,
        "image_set_id": request.image_set_id,
        "state": record.state,
    }


def denied(action: str, reasons: tuple[str, ...], decision_id: str) -> PermissionDenied:
    said = "; ".join(reasons or ("no reason given",))
    return PermissionDenied(f"policy denied {action}: {said}", decision_id, reasons)


def _filter(query: OperationQuery) -> dict[str, str]:
    return {
        "principal": query.principal,
        "datastore_id": query.datastore_id,
        "image_set_id": query.image_set_id,
        "state": query.state,
    }


def _matches(record: OperationRecord, query: OperationQuery) -> bool:
    request = record.request
    return (
        query.principal in ("", record.principal)
        and query.datastore_id in ("", request.datastore_id)
        and query.image_set_id in ("", request.image_set_id)
        and query.state in ("", record.state)
        and (record.decision.break_glass or not query.break_glass)
    )


Cursor = tuple[float, str]
"""(created_at, id) of the last operation of a page: the next page starts after it."""


def _checked(query: OperationQuery) -> tuple[int, Cursor | None]:
    """The page size and the cursor, or INVALID_ARGUMENT naming each bad field."""
    violations = []
    if query.state and query.state not in STATES:
        violations.append(FieldViolation("state", f"one of {', '.join(sorted(STATES))}"))
    if not 0 <= query.max_results <= MAX_PAGE:
        violations.append(FieldViolation("max_results", f"0 (= {DEFAULT_PAGE}) to {MAX_PAGE}"))
    after = None
    if query.next_token:
        try:
            created_at, operation_id = json.loads(base64.urlsafe_b64decode(query.next_token))
            after = (float(created_at), str(operation_id))
        except (ValueError, TypeError, binascii.Error):
            violations.append(FieldViolation("next_token", "not a token this service gave"))
    if violations:
        raise InvalidArgument(violations)
    return query.max_results or DEFAULT_PAGE, after


def page(
    records: list[OperationRecord], size: int, after: Cursor | None
) -> tuple[list[OperationRecord], str]:
    """Oldest first, from just after `after`; the token names the last one given."""
    ordered = sorted(records, key=lambda r: (r.created_at, r.id))
    if after is not None:
        ordered = [r for r in ordered if (r.created_at, r.id) > after]
    shown = ordered[:size]
    if len(ordered) <= size:
        return shown, ""
    last = shown[-1]
    token = base64.urlsafe_b64encode(json.dumps([last.created_at, last.id]).encode()).decode()
    return shown, token
