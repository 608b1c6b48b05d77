"""Approvals without I/O beyond an in-memory SQLite journal: the requester never approves,
rejects or reviews their own update even when the policy says yes; the events an approval makes
the owner tell; the purpose checks; the policy's approval answer read fail-closed."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from service.core.config import JournalSettings, LimitSettings
from service.core.errors import PermissionDenied, PolicyUnavailable, WrongState
from service.core.model import Approval, Caller, Decision, OperationRecord
from service.journal import open_journal
from service.normaliser.documents import Violations
from service.normaliser.purpose import check_why
from service.observability.metrics import Metrics
from service.operations.approvals import Approvals
from service.operations.awaiting import news
from service.operations.events import Approved, Authorized, Expired, Rejected
from service.policy.decisions import parse_result
from tests.unit.journal.test_journal import record, request

REQUESTER = Caller("dev:patient", "dev")


class YesToEverything:
    """A policy that allows every action (a hospital's mistake): the hard rule still holds."""

    async def permits(self, *args: Any) -> Decision:
        return Decision(True, (), "yes")


class NoRunner:
    def operation(self, operation_id: str) -> None:
        return None


def awaiting() -> OperationRecord:
    asked = Approval(("approver",), (), 1, time.time() + 60, ("needs approval",), "d-1")
    return replace(record("op-1", principal=REQUESTER.principal), state="awaiting_approval",
                   approval=asked)  # fmt: skip


@pytest.mark.parametrize("verdict", ["approve", "reject", "review"])
async def test_a_requester_never_decides_on_their_own_update(verdict: str) -> None:
    async with open_journal(JournalSettings()) as journal:
        stored = await journal.create(awaiting())
        if verdict == "review":  # a break-glass update, ended
            glass = replace(stored.decision, break_glass=True)
            await journal.save(replace(stored, state="finished", decision=glass, seq=2))
        approvals = Approvals(
            YesToEverything(),  # type: ignore[arg-type]
            NoRunner(),  # type: ignore[arg-type]
            journal,
            None,  # type: ignore[arg-type]  # never read: refused before
            None,  # type: ignore[arg-type]
            Metrics(),
            LimitSettings(),
        )
        with pytest.raises(PermissionDenied, match="their own update"):
            await getattr(approvals, verdict)(REQUESTER, "op-1", "")
        after = await journal.get("op-1")
    assert after is not None and after.approval is not None
    assert after.approval.approved_by == () and after.reviewed_by == ""


async def test_review_needs_an_ended_break_glass_update() -> None:
    async with open_journal(JournalSettings()) as journal:
        await journal.create(awaiting())
        approvals = Approvals(YesToEverything(), NoRunner(), journal, None, None, Metrics(),  # type: ignore[arg-type]
                              LimitSettings())  # fmt: skip
        with pytest.raises(WrongState) as refused:
            await approvals.review(Caller("dev:boss", "dev"), "op-1", "")
    assert refused.value.reason == "NOT_BREAK_GLASS"


def test_the_events_an_owner_tells_after_a_change() -> None:
    before = awaiting()
    assert before.approval is not None
    given = replace(before.approval, approved_by=("dev:a",))
    approved = replace(before, state="queued", approval=given, decision=Decision(True, (), "d-2"))
    rejected = replace(before, state="rejected", approval=replace(given, rejected_by="dev:b"))
    expired = replace(before, state="expired")

    assert [type(e) for e in news(before, approved)] == [Approved, Authorized]
    assert [type(e) for e in news(before, rejected)] == [Approved, Rejected]
    assert [type(e) for e in news(before, expired)] == [Expired]
    assert [type(e) for e in news(approved, approved)] == [Authorized]  # no approval told twice


def violations(**why: Any) -> list[str]:
    found = Violations()
    check_why(replace(request(), **why), found)
    return [f"{v.field}: {v.description}" for v in found.kept]


def test_purpose_ticket_and_justification_are_bounded() -> None:
    assert violations(purpose_of_use="TREAT", ticket="HIM-42", justification="typo") == []
    assert violations(purpose_of_use="BECAUSE") == [
        "purpose_of_use: not an HL7 v3 PurposeOfUse code (TREAT, HOPERAT, ...)"
    ]
    assert violations(ticket="x" * 129)[0].startswith("ticket:")
    assert violations(ticket="a b")[0].startswith("ticket:")
    assert violations(justification="x" * 1001) == ["justification: at most 1000 characters"]
    assert violations(justification="a\x00b") == [
        "justification: control characters are not allowed"
    ]
    assert violations(break_glass=True) == ["justification: required with break_glass"]


def answer(result: Mapping[str, Any]) -> Mapping[str, Any]:
    return {"result": result, "decision_id": "d-1"}


def test_an_approval_answer_is_read_or_refused() -> None:
    asked = {"approvers": {"roles": ["r"]}, "count": 2, "ttl_seconds": 60}
    decision = parse_result(answer({"allow": False, "reasons": ["x"], "approval": asked}))
    assert decision.needs_approval and decision.approval is not None
    assert (decision.approval.roles, decision.approval.count) == (("r",), 2)
    glass = parse_result(answer({"allow": True, "reasons": [], "break_glass": True}))
    assert glass.allow and glass.break_glass and not glass.needs_approval
    for bad in (
        {**asked, "approvers": {"roles": [], "principals": []}},
        {**asked, "count": 0},
        {**asked, "ttl_seconds": 0},
        {**asked, "ttl_seconds": True},
        "soon",
    ):
        with pytest.raises(PolicyUnavailable):
            parse_result(answer({"allow": False, "reasons": [], "approval": bad}))
