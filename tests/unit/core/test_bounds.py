"""Issue 18, parts 5 and 6 without I/O: ids and keys checked at the edge, what an error message
may repeat of caller input, and the open-stream bound per principal."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import generate_latest

from service.core.config import LimitSettings
from service.core.errors import (
    ECHO_CHARS,
    MESSAGE_BUDGET,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    echo,
)
from service.core.model import UpdateRequest
from service.normaliser.updates import MAX_IDEMPOTENCY_KEY_CHARS, normalise, operation_id
from service.observability.metrics import Metrics
from service.transport.grpc_errors import to_status
from service.transport.open_streams import OpenStreams

DATASTORE = "0123456789abcdef0123456789abcdef"
DOCUMENT = b'{"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "X"}}}'


def request(**fields: object) -> UpdateRequest:
    values: dict[str, object] = {
        "datastore_id": DATASTORE, "image_set_id": DATASTORE, "latest_version_id": "1",
        "force": False, "include_study_image_sets": False, "updatable_attributes": DOCUMENT,
        "removable_attributes": None, "revert_to_version_id": None, "kind": "dicom_updates",
    }  # fmt: skip
    return UpdateRequest(**(values | fields))  # type: ignore[arg-type]


def violations(req: UpdateRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        normalise(req)
    return {v.field: v.description for v in raised.value.reported}


# --- idempotency keys, versions and operation ids ------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [str(uuid.uuid4()), "nightly-batch:2026-12-03.0001", "k", "a" * MAX_IDEMPOTENCY_KEY_CHARS],
)
def test_idempotency_keys_of_the_documented_form_are_accepted(key: str) -> None:
    assert normalise(request(idempotency_key=key)).idempotency_key == key


@pytest.mark.parametrize(
    "key",
    ["a" * (MAX_IDEMPOTENCY_KEY_CHARS + 1), "k" * 200_000, "with space", "é", "a\nb", "x/y"],
)
def test_other_idempotency_keys_are_refused_without_being_repeated(key: str) -> None:
    found = violations(request(idempotency_key=key))
    description = found["idempotency_key"]
    assert f"({len(key)} characters given)" in description
    assert key not in description or len(key) < 2
    assert len(description) < 200


@pytest.mark.parametrize("field", ["latest_version_id", "revert_to_version_id"])
def test_version_ids_are_bounded(field: str) -> None:
    kind = {"kind": "revert", "updatable_attributes": None, "revert_to_version_id": "1"}
    base = kind if field == "revert_to_version_id" else {}
    assert normalise(request(**(base | {field: "9" * 20})))
    found = violations(request(**(base | {field: "9" * 20_000})))
    assert "1 to 20 digits" in " ".join(found.values())


def test_operation_ids_are_the_uuids_the_proxy_gives() -> None:
    given = str(uuid.uuid4())
    assert operation_id(given) == given


@pytest.mark.parametrize(
    "value", ["", "no-such-operation", "x" * 20_000, str(uuid.uuid4()).upper(), f" {uuid.uuid4()}"]
)
def test_other_operation_ids_are_invalid_and_not_repeated(value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        operation_id(value)
    (violation,) = raised.value.reported
    assert violation.field == "operation_id"
    assert f"{len(value)} characters given" in violation.description
    assert value.strip() == "" or value not in violation.description


# --- what a message repeats of the caller's input ------------------------------------------------


def test_echo_shows_a_short_sanitised_prefix() -> None:
    assert echo("op-1") == "'op-1'"
    long = "a" * 20_000
    assert echo(long) == f"'{'a' * ECHO_CHARS}'... (20000 characters)"
    assert echo("a\nb\x00c\u202e'\"<>é") == "'a?b?c??????'"


def test_not_found_repeats_at_most_a_prefix_of_the_id() -> None:
    missing = str(uuid.uuid4()) + "z" * 20_000  # as the runner builds it, whatever it is given
    status = to_status(NotFound(f"no operation {echo(missing)}"))
    assert len(status.message) < 120
    assert missing not in status.message


def test_every_status_message_is_bounded() -> None:
    status = to_status(NotFound("x" * 50_000))
    assert len(status.message) == MESSAGE_BUDGET
    assert status.ByteSize() < 2 * MESSAGE_BUDGET


# --- open streams per principal ------------------------------------------------------------------


def test_streams_beyond_the_bound_are_refused_with_retry_info() -> None:
    metrics = Metrics()
    streams = OpenStreams(LimitSettings(max_streams_per_principal=2), metrics)
    held = [streams.hold("dev:a", "WatchUpdate") for _ in range(2)]
    with pytest.raises(ResourceExhausted) as refused:
        streams.hold("dev:a", "UpdateImageSetMetadata")
    assert (refused.value.reason, refused.value.retry_after_seconds) == ("TOO_MANY_STREAMS", 1.0)
    with streams.hold("dev:b", "WatchUpdate"):  # another principal is not affected
        assert (streams.held("dev:a"), streams.held("dev:b")) == (2, 1)
    with held[0]:
        pass  # the block's end releases the slot
    assert streams.held("dev:a") == 1
    with streams.hold("dev:a", "WatchUpdate"):
        assert streams.busiest() == 2
    with held[1]:
        pass
    assert (streams.held("dev:a"), streams.busiest()) == (0, 0)
    exported = generate_latest(metrics.registry).decode()
    assert 'imaging_proxy_stream_refusals_total{rpc="UpdateImageSetMetadata"} 1.0' in exported
    assert "imaging_proxy_open_streams_busiest_principal 0.0" in exported
    assert "dev:a" not in exported  # no label per principal


def test_a_slot_is_released_when_its_block_raises() -> None:
    streams = OpenStreams(LimitSettings(max_streams_per_principal=1), Metrics())
    with pytest.raises(RuntimeError), streams.hold("dev:a", "WatchUpdate"):
        raise RuntimeError("the stream failed")
    with streams.hold("dev:a", "WatchUpdate"):
        assert streams.held("dev:a") == 1
