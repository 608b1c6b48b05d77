"""Which symbols the reflection servicer answers with their owner's file (no server)."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb

from service.transport.reflection import member_owner

SERVICE = pb.DESCRIPTOR.services_by_name["MetadataUpdateService"].full_name
POOL = descriptor_pool.Default()


@pytest.mark.parametrize(
    ("symbol", "owner"),
    [
        (f"{SERVICE}.EvaluateUpdate", SERVICE),
        (f"{SERVICE}.WatchUpdate", SERVICE),
        (
            "imaging.metadata.v1.DICOMUpdates.updatable_attributes",
            "imaging.metadata.v1.DICOMUpdates",
        ),
        ("imaging.metadata.v1.UpdateEvent.event", "imaging.metadata.v1.UpdateEvent"),
        (f"{SERVICE}.NoSuchMethod", None),
        ("imaging.metadata.v1.DICOMUpdates.no_such_field", None),
        ("imaging.metadata.v1.NoSuchType.field", None),
        (SERVICE, None),  # a type resolves by itself, it has no owner
        ("EvaluateUpdate", None),
    ],
)
def test_member_owner(symbol: str, owner: str | None) -> None:
    assert member_owner(POOL, symbol) == owner
