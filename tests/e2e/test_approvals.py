"""Four eyes (issue 22) against real OPA (the shipped policies, with short approval lifetimes),
the emulator and a proxy whose SQLite journal survives a SIGKILL (and two replicas sharing a
Redis journal, one of which dies while an update waits).

demo-patient's PatientID change waits for an approver (role patient-identity-approver, which
demo-admin holds): nothing is written before the approval and exactly one write after it. The
requester never approves, an approver the policy does not name is refused, a rejection and an
expiry end the stream with their own event, an approval after the image set changed ends it
ABORTED, a restart keeps it waiting, and demo-clinician's break-glass goes ahead at once,
audited with an outcome of its own (the justification's digest only), counted and reviewable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.stack import StackSpec, running_stack
from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    collect,
    dev,
    kinds,
    read_until,
    redis_server,
    study_update,
)
from tests.e2e.test_steering import error_info

pytestmark = [pytest.mark.e2e]

PATIENT, ADMIN, EDITOR, CLINICIAN = (
    dev("demo-patient"),
    dev("demo-admin"),
    dev("demo-editor"),
    dev("demo-clinician"),
)
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "audit.schema.json").read_text())
JUSTIFICATION = "MRN typo on DOE^JANE, see HIM-42"  # recognisable: it must never be logged
SHORT_LIVED_TAG = "00100021"  # IssuerOfPatientID: a rule of its own that expires in 2 s


def policies_with_short_approvals(folder: Path) -> Path:
    """The shipped policies, with the PatientID rule's lifetime cut to 10 minutes and a second
    rule (IssuerOfPatientID) that expires in 2 s."""
    shutil.copytree(Path(__file__).parents[2] / "policies", folder)
    data = json.loads((folder / "data.json").read_text())
    rules = data["imaging"]["approvals"]["rules"]
    identifier = rules[0]
    identifier["tags"] = [tag for tag in identifier["tags"] if tag != SHORT_LIVED_TAG]
    identifier["ttl_seconds"] = 600
    rules.append({**identifier, "name": "short-lived", "tags": [SHORT_LIVED_TAG], "ttl_seconds": 2})
    (folder / "data.json").write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    work = tmp_path_factory.mktemp("approvals")
    policies = policies_with_short_approvals(work / "policies")
    with running_stack(StackSpec(13, update_delay=0.2, policies=policies), work) as local:
        yield QuotaStack(local)


@pytest.fixture(scope="module")
def proxy(backend: QuotaStack) -> ProxyProcess:
    return backend.proxy("proxy", sections(backend))


def sections(backend: QuotaStack) -> dict[str, Any]:
    return {"journal": {"data_dir": str(backend.work / "journal")}}


@pytest.fixture
async def stub(proxy: ProxyProcess) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


def identifier_update(
    backend: QuotaStack, image_set: str, *, tag: str = "PatientID", **why: Any
) -> pb.UpdateImageSetMetadataRequest:
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {tag: "4MR1-FIXED"}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=backend.datastore_id,
        image_set_id=image_set,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
        purpose_of_use=why.pop("purpose_of_use", "PATADMIN"),
        justification=why.pop("justification", JUSTIFICATION),
        ticket=why.pop("ticket", "HIM-42"),
        **why,
    )


def writes(backend: QuotaStack, image_set: str) -> int:
    updates = backend.requests("UpdateImageSetMetadata")
    return sum(1 for r in updates if r["imageSetId"] == image_set)


async def awaiting(
    stub: pb_grpc.MetadataUpdateServiceStub, request: pb.UpdateImageSetMetadataRequest
) -> tuple[Any, str]:
    """Start an update that waits for approval: its call, and its operation id."""
    call = stub.UpdateImageSetMetadata(request, metadata=PATIENT)
    events = await read_until(call, "approval_required")
    return call, events[-1].operation_id


async def rest(call: Any, within: float = 30.0) -> list[pb.UpdateEvent]:
    """The stream's remaining events (it was read with `read` so far), to its end."""

    async def remaining() -> list[pb.UpdateEvent]:
        events = []
        while (event := await call.read()) != grpc.aio.EOF:
            events.append(event)
        return events

    return await asyncio.wait_for(remaining(), within)


def get(operation_id: str) -> pb.GetOperationRequest:
    return pb.GetOperationRequest(operation_id=operation_id)


async def refused(coroutine: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await coroutine
    return raised.value


async def test_the_whole_flow_writes_once_and_only_after_the_approval(
    backend: QuotaStack, proxy: ProxyProcess, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    call, operation_id = await awaiting(stub, identifier_update(backend, image_set))
    asked = await stub.GetOperation(get(operation_id), metadata=PATIENT)
    waiting = pb.ListOperationsRequest(
        datastore_id=backend.datastore_id, state="awaiting_approval", image_set_id=image_set
    )
    listed = await stub.ListOperations(waiting, metadata=ADMIN)
    before = writes(backend, image_set)
    approve = pb.ApproveUpdateRequest(operation_id=operation_id, comment="checked")
    own = await refused(stub.ApproveUpdate(approve, metadata=PATIENT))
    unnamed = await refused(stub.ApproveUpdate(approve, metadata=EDITOR))
    approved = await stub.ApproveUpdate(approve, metadata=ADMIN)
    again = await stub.ApproveUpdate(approve, metadata=ADMIN)  # a retry: the same answer
    after = await rest(call)

    assert asked.state == "awaiting_approval" and asked.purpose_of_use == "PATADMIN"
    assert asked.ticket == "HIM-42" and asked.approval_expires_at.seconds > 0
    assert [o.operation_id for o in listed.operations] == [operation_id]
    assert before == 0
    assert own.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "their own update" in (own.details() or "")
    assert unnamed.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "approvers the policy named" in (unnamed.details() or "")
    assert approved.state == "queued" and list(approved.approved_by) == ["dev:demo-admin"]
    assert again.state in ("queued", "submitting", "submitted", "finished")
    assert kinds(after)[:2] == ["approved", "authorized"]
    assert kinds(after)[-1] == "finished"
    assert after[-1].finished.state.image_set_workflow_status == "UPDATED"
    assert writes(backend, image_set) == 1
    audited = [
        (r["event"], r["outcome"], r.get("rpc"))
        for r in proxy.audit_records()
        if r.get("image_set_id") == image_set and r["principal"] != "dev:demo-editor"
    ]
    assert audited[0] == ("decision", "approval_required", "UpdateImageSetMetadata")
    assert ("approval", "approved", "ApproveUpdate") in audited
    assert ("decision", "allowed", "ApproveUpdate") in audited  # decided again, audited
    assert audited[-1] == ("finish", "UPDATED", None)


async def test_the_policy_asks_who_may_approve_and_until_when(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    call = stub.UpdateImageSetMetadata(identifier_update(backend, image_set), metadata=PATIENT)
    (event,) = await read_until(call, "approval_required")
    call.cancel()
    asked = event.approval_required

    assert list(asked.approver_roles) == ["patient-identity-approver"]
    assert asked.count == 1 and "patient identifier change needs approval" in asked.reasons
    assert 590 < asked.expires_at.seconds - event.at.seconds <= 600


async def test_a_justification_is_required_for_a_patient_identifier(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    request = identifier_update(backend, image_set, justification="")
    denied = await refused(collect(stub.UpdateImageSetMetadata(request, metadata=PATIENT)))

    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "require a justification" in (denied.details() or "")


async def test_a_rejection_ends_the_stream_and_writes_nothing(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    call, operation_id = await awaiting(stub, identifier_update(backend, image_set))
    reject = pb.RejectUpdateRequest(operation_id=operation_id, comment="wrong patient")
    own = await refused(stub.RejectUpdate(reject, metadata=PATIENT))
    rejected = await stub.RejectUpdate(reject, metadata=ADMIN)
    after = await rest(call, 10)
    late = await refused(
        stub.ApproveUpdate(pb.ApproveUpdateRequest(operation_id=operation_id), metadata=ADMIN)
    )

    assert own.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rejected.state == "rejected" and rejected.rejected_by == "dev:demo-admin"
    assert kinds(after) == ["rejected"] and after[-1].rejected.rejected_by == "dev:demo-admin"
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(late)["reason"] == "NOT_AWAITING_APPROVAL"
    assert writes(backend, image_set) == 0


async def test_the_requester_may_take_back_a_waiting_update(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    call, operation_id = await awaiting(stub, identifier_update(backend, image_set))
    cancel = pb.CancelUpdateRequest(operation_id=operation_id)
    cancelled = await stub.CancelUpdate(cancel, metadata=PATIENT)
    after = await rest(call, 10)

    assert cancelled.state == "cancelled"
    assert kinds(after) == ["cancelled"]
    assert writes(backend, image_set) == 0


async def test_an_approval_nobody_gives_expires(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    request = identifier_update(backend, image_set, tag="IssuerOfPatientID")
    call, operation_id = await awaiting(stub, request)
    after = await rest(call, 15)
    ended = await stub.GetOperation(
        pb.GetOperationRequest(operation_id=operation_id), metadata=PATIENT
    )

    assert kinds(after) == ["expired"]
    assert ended.state == "expired"
    assert writes(backend, image_set) == 0


async def test_an_approval_after_the_image_set_changed_is_aborted(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    call, operation_id = await awaiting(stub, identifier_update(backend, image_set))
    await collect(stub.UpdateImageSetMetadata(
        study_update(backend.datastore_id, image_set, "MEANWHILE"), metadata=EDITOR
    ))  # fmt: skip
    answer = await stub.ApproveUpdate(
        pb.ApproveUpdateRequest(operation_id=operation_id), metadata=ADMIN
    )
    ended = await refused(rest(call, 10))

    assert answer.state == "failed" and answer.error_code == "ABORTED"
    assert ended.code() == grpc.StatusCode.ABORTED
    assert error_info(ended)["reason"] == "IMAGE_SET_CHANGED"
    assert writes(backend, image_set) == 1  # the editor's; the approved one never


async def test_a_waiting_update_survives_a_restart(backend: QuotaStack) -> None:
    (image_set,) = backend.take(1)
    first = backend.proxy("restarted", sections_of(backend, "restarted"))
    async with grpc.aio.insecure_channel(first.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        call, operation_id = await awaiting(stub, identifier_update(backend, image_set))
        first.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await rest(call, 10)
    second = backend.proxy("restarted", sections_of(backend, "restarted"))
    async with grpc.aio.insecure_channel(second.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        watched = stub.WatchUpdate(
            pb.WatchUpdateRequest(operation_id=operation_id), metadata=PATIENT
        )
        replayed = await read_until(watched, "approval_required")
        approved = await stub.ApproveUpdate(
            pb.ApproveUpdateRequest(operation_id=operation_id), metadata=ADMIN
        )
        after = await rest(watched)

    assert kinds(replayed) == ["approval_required"]
    assert approved.state == "queued"
    assert kinds(after)[-1] == "finished"
    assert writes(backend, image_set) == 1


def sections_of(backend: QuotaStack, name: str) -> dict[str, Any]:
    return {"journal": {"data_dir": str(backend.work / f"journal-{name}")}}


async def test_break_glass_goes_ahead_audited_counted_and_reviewable(
    backend: QuotaStack, proxy: ProxyProcess, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = backend.take(1)
    request = identifier_update(backend, image_set, purpose_of_use="ETREAT", break_glass=True)
    events = await asyncio.wait_for(
        collect(stub.UpdateImageSetMetadata(request, metadata=CLINICIAN)), 30
    )
    operation_id = events[0].operation_id
    listed = await stub.ListOperations(
        pb.ListOperationsRequest(datastore_id=backend.datastore_id, break_glass=True),
        metadata=ADMIN,
    )
    review = pb.ReviewUpdateRequest(operation_id=operation_id, comment="justified")
    own = await refused(stub.ReviewUpdate(review, metadata=CLINICIAN))
    not_reviewer = await refused(stub.ReviewUpdate(review, metadata=EDITOR))
    reviewed = await stub.ReviewUpdate(review, metadata=ADMIN)
    without_role = await refused(collect(stub.UpdateImageSetMetadata(
        identifier_update(backend, backend.take(1)[0], break_glass=True), metadata=PATIENT
    )))  # fmt: skip

    assert kinds(events)[0] == "authorized" and kinds(events)[-1] == "finished"
    assert writes(backend, image_set) == 1
    assert operation_id in [o.operation_id for o in listed.operations]
    assert all(o.break_glass for o in listed.operations)
    assert own.code() == not_reviewer.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reviewed.reviewed_by == "dev:demo-admin" and reviewed.break_glass
    assert without_role.code() == grpc.StatusCode.PERMISSION_DENIED
    assert JUSTIFICATION not in proxy.log_path.read_text()
    assert JUSTIFICATION not in proxy.audit_path.read_text()
    audits = proxy.audit_records()
    for record in audits:
        jsonschema.validate(record, SCHEMA, format_checker=jsonschema.FormatChecker())
    glass = [a for a in audits if a["outcome"] == "break_glass"]
    assert len(glass) == 1 and glass[0]["purpose_of_use"] == "ETREAT"
    assert glass[0]["event"] == "decision" and glass[0]["ticket"] == "HIM-42"
    assert glass[0]["justification_length"] == len(JUSTIFICATION)
    assert glass[0]["justification_sha256"] == hashlib.sha256(JUSTIFICATION.encode()).hexdigest()
    finished = [a for a in audits if a["event"] == "finish" and a["operation_id"] == operation_id]
    assert finished[0]["break_glass"] is True
    reviews = [a for a in audits if a["outcome"] == "reviewed"]
    assert [(r["principal"], r["owner"]) for r in reviews] == [
        ("dev:demo-admin", "dev:demo-clinician")
    ]
    assert reviews[0]["comment_sha256"] == hashlib.sha256(b"justified").hexdigest()
    url = f"http://127.0.0.1:{proxy.metrics_port}/metrics"
    metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
    assert b"imaging_proxy_break_glass_total 1.0" in metrics


@pytest.mark.redis
async def test_a_waiting_update_outlives_its_replica(backend: QuotaStack, tmp_path: Path) -> None:
    (image_set,) = backend.take(1)
    with redis_server(tmp_path / "redis") as url:
        shared = {"journal": {"url": url, "lease_seconds": 2.0}}
        dying, survivor = (backend.proxy(f"replica-{n}", shared) for n in "ab")
        async with (
            grpc.aio.insecure_channel(dying.endpoint) as first,
            grpc.aio.insecure_channel(survivor.endpoint) as second,
        ):
            a, b = (pb_grpc.MetadataUpdateServiceStub(c) for c in (first, second))
            call, operation_id = await awaiting(a, identifier_update(backend, image_set))
            dying.kill()
            with pytest.raises(grpc.aio.AioRpcError):
                await rest(call, 10)
            watched = b.WatchUpdate(
                pb.WatchUpdateRequest(operation_id=operation_id), metadata=PATIENT
            )
            await read_until(watched, "approval_required")
            approved = await b.ApproveUpdate(
                pb.ApproveUpdateRequest(operation_id=operation_id), metadata=ADMIN
            )
            after = await rest(watched, 40)  # the survivor takes it over once the lease lapses

    assert approved.state == "queued"
    assert kinds(after)[-1] == "finished"
    assert writes(backend, image_set) == 1
