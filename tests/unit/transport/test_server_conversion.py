"""The transport's conversions: protobuf request → UpdateRequest, events → UpdateEvent (pure)."""

from __future__ import annotations

import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb

from service.core.model import Decision, ImageSetStatus
from service.operations.events import (
    Authorized,
    Event,
    Finished,
    Heartbeat,
    Queued,
    StatusChanged,
    Submitted,
)
from service.transport.server import to_pb_event, to_update_request

STATUS = ImageSetStatus("ds", "set", "2", "ACTIVE", "UPDATED", 10.5, 12.25, "done")


def test_a_dicom_update_keeps_given_empty_and_absent_blobs_apart() -> None:
    request = pb.UpdateImageSetMetadataRequest(
        datastore_id="ds",
        image_set_id="set",
        latest_version_id="1",
        force=True,
        idempotency_key="k",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=b""),
    )
    converted = to_update_request(request)
    assert converted.kind == "dicom_updates" and converted.force
    assert converted.updatable_attributes == b""  # given, empty: the normaliser refuses it
    assert converted.removable_attributes is None  # not given
    assert converted.revert_to_version_id is None
    assert converted.idempotency_key == "k"


def test_a_revert_and_a_request_without_updates() -> None:
    revert = to_update_request(pb.UpdateImageSetMetadataRequest(revert_to_version_id="1"))
    assert revert.kind == "revert" and revert.revert_to_version_id == "1"
    assert revert.updatable_attributes is None
    assert to_update_request(pb.UpdateImageSetMetadataRequest()).kind is None


@pytest.mark.parametrize(
    ("event", "member"),
    [
        (Authorized("op", 1.0, Decision(True, ("granted",), "d-1")), "authorized"),
        (Queued("op", 1.0, 3, 20.0), "queued"),
        (Submitted("op", 1.0, STATUS), "submitted"),
        (StatusChanged("op", 1.0, STATUS), "status"),
        (Finished("op", 1.0, STATUS), "finished"),
        (Heartbeat("op", 1.0, STATUS), "heartbeat"),
    ],
)
def test_every_event_becomes_its_oneof_member(event: Event, member: str) -> None:
    message = to_pb_event(event)
    assert message.WhichOneof("event") == member
    assert message.operation_id == "op" and message.at.ToNanoseconds() == 1_000_000_000


def test_an_image_set_state_carries_every_field() -> None:
    state = to_pb_event(Finished("op", 1.0, STATUS)).finished.state
    assert (state.datastore_id, state.image_set_id, state.latest_version_id) == ("ds", "set", "2")
    assert (state.image_set_state, state.image_set_workflow_status) == ("ACTIVE", "UPDATED")
    assert state.created_at.ToNanoseconds() == 10_500_000_000
    assert state.updated_at.ToNanoseconds() == 12_250_000_000
    assert state.message == "done"


def test_a_heartbeat_before_any_state_is_empty() -> None:
    beat = to_pb_event(Heartbeat("op", 1.0, None)).heartbeat
    assert (beat.image_set_state, beat.image_set_workflow_status) == ("", "")
