"""The client library against real OPA, emulator and proxy processes (the fault tests' stack)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from imaging_proxy_client import (
    Authorized,
    Credentials,
    DeadlineExceeded,
    Finished,
    MetadataUpdateClient,
    PolicyDenied,
    Retrying,
    RpcError,
    Submitted,
    SyncMetadataUpdateClient,
    UpdateEvent,
)

from devstack.processes import free_port
from devstack.stack import LocalStack
from tests.e2e.faults.harness import PROXY_ARGS, RAISED_BUDGETS, Emulator, Proxy

pytestmark = pytest.mark.e2e


def _name(name: str) -> dict[str, object]:
    """Change PatientName (a value made up by the test, never real patient data)."""
    return {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}


async def test_allowed_update_yields_typed_events_and_ends_updated(
    client: MetadataUpdateClient, emulator: Emulator
) -> None:
    image_set = emulator.take_image_set()
    events = [
        event
        async for event in client.update(
            emulator.datastore_id, image_set, "1", updatable=_name("CLIENT^ALLOWED")
        )
    ]

    assert isinstance(events[0], Authorized) and events[0].decision_id
    assert isinstance(events[-1], Finished)
    assert events[-1].state.workflow_status == "UPDATED"
    assert events[-1].state.latest_version_id == "2"
    assert len({event.operation_id for event in events}) == 1
    assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1


async def test_update_and_wait_returns_the_final_state(
    client: MetadataUpdateClient, emulator: Emulator
) -> None:
    image_set = emulator.take_image_set()
    state = await client.update_and_wait(
        emulator.datastore_id, image_set, "1", updatable=_name("CLIENT^WAITED")
    )
    assert (state.image_set_state, state.workflow_status) == ("ACTIVE", "UPDATED")


async def test_denial_carries_the_policy_reasons_and_decision_id(
    proxy: Proxy, emulator: Emulator
) -> None:
    image_set = emulator.take_image_set()
    viewer = Credentials.insecure(dev_principal="demo-viewer")
    async with MetadataUpdateClient(proxy.endpoint, viewer) as client:
        with pytest.raises(PolicyDenied) as raised:
            await client.update_and_wait(
                emulator.datastore_id, image_set, "1", updatable=_name("CLIENT^DENIED")
            )

    denied = raised.value
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert denied.reason == "POLICY_DENIED" and denied.domain == "imaging-proxy"
    assert denied.decision_id
    assert denied.reasons
    assert "CLIENT^DENIED" not in str(denied)
    assert emulator.calls("UpdateImageSetMetadata", image_set) == []


async def test_stale_version_is_healthimagings_conflict(
    client: MetadataUpdateClient, emulator: Emulator
) -> None:
    image_set = emulator.take_image_set()
    ids = (emulator.datastore_id, image_set)
    await client.update_and_wait(*ids, "1", updatable=_name("CLIENT^FIRST"))

    with pytest.raises(RpcError) as raised:
        await client.update_and_wait(*ids, "1", updatable=_name("CLIENT^STALE"))

    assert raised.value.code is grpc.StatusCode.ABORTED
    assert raised.value.aws_error_code == "ConflictException"


async def test_a_time_limit_ends_the_call_with_the_operation_id_to_re_attach(
    client: MetadataUpdateClient, emulator: Emulator
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults({"update_stall_rate": 1.0})
    with pytest.raises(DeadlineExceeded) as raised:
        await client.update_and_wait(
            emulator.datastore_id, image_set, "1", updatable=_name("CLIENT^LATE"), time_limit=2.0
        )
    assert raised.value.operation_id

    emulator.clear_faults()
    assert emulator.release_stalled() >= 1
    events = [event async for event in client.watch(raised.value.operation_id, time_limit=30.0)]
    assert isinstance(events[-1], Finished)
    assert events[-1].state.workflow_status == "UPDATED"


async def test_proxy_killed_mid_update_and_restarted_the_client_re_attaches(
    fault_stack: LocalStack, emulator: Emulator, tmp_path: Path
) -> None:
    port = free_port()
    journal = {**RAISED_BUDGETS, "journal": {"data_dir": str(tmp_path / "journal")}}
    first = fault_stack.add_proxy(tmp_path / "first", PROXY_ARGS, journal, port=port)
    restarted: Proxy | None = None
    image_set = emulator.take_image_set()
    emulator.set_faults({"update_stall_rate": 1.0})
    seen: list[UpdateEvent] = []
    admin = Credentials.insecure(dev_principal="demo-admin")
    try:
        async with MetadataUpdateClient(first.endpoint, admin, retry_timeout=60.0) as client:
            updates = client.update(
                emulator.datastore_id, image_set, "1", updatable=_name("CLIENT^RESUMED")
            )
            async for event in updates:
                seen.append(event)
                # A re-attach replays `submitted`: restart once.
                if isinstance(event, Submitted) and restarted is None:
                    first.kill()
                    emulator.clear_faults()
                    restarted = fault_stack.add_proxy(
                        tmp_path / "restarted", PROXY_ARGS, journal, port=port
                    )
                    assert emulator.release_stalled() >= 1
    finally:
        first.stop()
        if restarted is not None:
            restarted.stop()

    operation_id = next(e.operation_id for e in seen if isinstance(e, Submitted))
    retries = [e for e in seen if isinstance(e, Retrying)]
    assert retries and all(r.operation_id == operation_id for r in retries)
    assert isinstance(seen[-1], Finished) and seen[-1].operation_id == operation_id
    assert seen[-1].state.workflow_status == "UPDATED"
    assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1


def test_the_sync_wrapper_evaluates_then_updates(proxy: Proxy, emulator: Emulator) -> None:
    image_set = emulator.take_image_set()
    ids = (emulator.datastore_id, image_set, "1")
    admin = Credentials.insecure(dev_principal="demo-admin")
    with SyncMetadataUpdateClient(proxy.endpoint, credentials=admin) as client:
        evaluation = client.evaluate(*ids, updatable=_name("CLIENT^SYNC"))
        state = client.update(*ids, updatable=_name("CLIENT^SYNC"))

    assert evaluation.allow and evaluation.decision_id
    assert [change.keyword for change in evaluation.changes] == ["PatientName"]
    assert state.workflow_status == "UPDATED"


async def test_operations_are_listed_got_and_a_finished_one_cannot_be_cancelled(
    client: MetadataUpdateClient, emulator: Emulator
) -> None:
    image_set = emulator.take_image_set()
    events = [
        event
        async for event in client.update(
            emulator.datastore_id, image_set, "1", updatable=_name("CLIENT^LISTED")
        )
    ]
    operation_id = events[-1].operation_id
    listed = [
        summary
        async for summary in client.operations(
            datastore_id=emulator.datastore_id, image_set_id=image_set, max_results=1
        )
    ]
    got = await client.get_operation(operation_id)
    with pytest.raises(RpcError) as refused:
        await client.cancel_update(operation_id)

    assert [s.operation_id for s in listed] == [operation_id]
    assert got == listed[0]
    assert (got.principal, got.state, got.image_set_id) == ("dev:demo-admin", "finished", image_set)
    assert got.last_state is not None and got.last_state.workflow_status == "UPDATED"
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "NOT_CANCELLABLE"
