"""Issue 18, parts 5 and 6 over real processes: oversized ids and keys are INVALID_ARGUMENT (not a
retryable RESOURCE_EXHAUSTED from an overflowing trailer), and one principal's open streams are
bounded while another's still open."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    Stack,
    assert_eventually,
    collect,
    dev,
    quota_stack,
    read_until,
    stalled_updates,
    study_update,
    write_quota,
)

pytestmark = pytest.mark.e2e

EDITOR, ADMIN = "demo-editor", "demo-admin"
BOUND = 3


async def refused(call: Any) -> tuple[grpc.StatusCode, str, int]:
    """The refusal's code, message and trailer size (the call must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(call)
    trailers = await call.trailing_metadata()
    size = sum(len(key) + len(value) for key, value in trailers)
    return raised.value.code(), raised.value.details() or "", size


# --- oversized ids and keys (the demo stack) -----------------------------------------------------


async def test_a_20_kb_operation_id_is_invalid_argument(
    stub: pb_grpc.MetadataUpdateServiceStub,
) -> None:
    huge = "a" * 20_000
    call = stub.WatchUpdate(pb.WatchUpdateRequest(operation_id=huge), metadata=dev(EDITOR))

    code, message, trailer_bytes = await refused(call)

    assert code == grpc.StatusCode.INVALID_ARGUMENT  # was NOT_FOUND echoing it: RESOURCE_EXHAUSTED
    assert "aaaaaaaaaa" not in message and "20000 characters given" in message
    assert trailer_bytes < 2_000


async def test_an_unknown_operation_is_named_by_a_bounded_prefix(
    stub: pb_grpc.MetadataUpdateServiceStub,
) -> None:
    unknown = str(uuid.uuid4())
    call = stub.WatchUpdate(pb.WatchUpdateRequest(operation_id=unknown), metadata=dev(EDITOR))
    code, message, _ = await refused(call)
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"no operation '{unknown}'")


@pytest.mark.parametrize("key", ["k" * 100_000, "not a key\n"], ids=["100_kb", "bad_characters"])
async def test_a_bad_idempotency_key_is_invalid_argument_and_nothing_is_written(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub, key: str
) -> None:
    image_set = stack.take_image_set()
    request = study_update(stack.datastore_id, image_set, "KEYED", key=key)
    call = stub.UpdateImageSetMetadata(request, metadata=dev(EDITOR))

    code, message, trailer_bytes = await refused(call)

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("idempotency_key: must be 1 to 128 ASCII letters")
    assert key not in message and trailer_bytes < 2_000
    assert stack.update_calls(image_set) == []


# --- open streams per principal (a proxy bounding them at 3) -------------------------------------


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    with quota_stack(tmp_path_factory.mktemp("bounds"), write_quota(10.0, 10.0), 4) as stack:
        yield stack


@pytest.fixture(scope="module")
def bounded(backend: QuotaStack) -> ProxyProcess:
    return backend.proxy(
        "bounded",
        {
            "limits": {"max_streams_per_principal": BOUND},
            "budget": {"update_rate": 10.0, "update_burst": 10.0},
        },
    )


@pytest.fixture
async def channel(bounded: ProxyProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(bounded.endpoint) as opened:
        yield opened


def watch(stub: pb_grpc.MetadataUpdateServiceStub, operation_id: str, who: str) -> Any:
    request = pb.WatchUpdateRequest(operation_id=operation_id)
    return stub.WatchUpdate(request, metadata=dev(who), timeout=60)


async def test_open_streams_are_bounded_per_principal(
    backend: QuotaStack, bounded: ProxyProcess, channel: grpc.aio.Channel
) -> None:
    stub = pb_grpc.MetadataUpdateServiceStub(channel)
    first, second = backend.take(2)
    with stalled_updates(backend):  # the update stays UPDATING: its streams stay open
        update = stub.UpdateImageSetMetadata(
            study_update(backend.datastore_id, first, "HELD"), metadata=dev(EDITOR), timeout=60
        )
        operation_id = (await read_until(update, "submitted"))[0].operation_id
        watches = [watch(stub, operation_id, EDITOR) for _ in range(BOUND - 1)]
        for held in watches:
            await read_until(held, "submitted")  # replayed: the stream is open and counted

        over = watch(stub, operation_id, EDITOR)
        code, message, _ = await refused(over)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_principal" in message
        status = await rpc_status.aio.from_call(over)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert retry.retry_delay.ToNanoseconds() > 0
        another = stub.UpdateImageSetMetadata(
            study_update(backend.datastore_id, second, "OVER"), metadata=dev(EDITOR), timeout=60
        )
        assert (await refused(another))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        updates = backend.requests("UpdateImageSetMetadata")
        assert [r["imageSetId"] for r in updates] == [first]

        admin_watch = watch(stub, operation_id, ADMIN)  # another principal is not bounded by it
        await read_until(admin_watch, "submitted")
        metrics = bounded.metrics()
        assert 'imaging_proxy_stream_refusals_total{rpc="WatchUpdate"} 1.0' in metrics
        assert f"imaging_proxy_open_streams_busiest_principal {BOUND}.0" in metrics
        assert EDITOR not in metrics

        watches[0].cancel()  # a closed stream frees its slot

        async def reopened() -> bool:
            again = watch(stub, operation_id, EDITOR)
            try:
                await read_until(again, "submitted")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            watches.append(again)
            return True

        await assert_eventually(reopened, within=10.0)
        for call in (update, admin_watch, *watches):
            call.cancel()
