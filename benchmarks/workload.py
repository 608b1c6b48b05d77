"""The work the benchmarks send: one small study-level update, as a gRPC request or AWS call.

A StudyDescription change is allowed for `metadata-editor` (every benchmark principal) and
applies to every seeded image set, so the same update goes through the proxy or straight to the
emulator and ends UPDATED either way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
import grpc
from aiobotocore.config import AioConfig
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb

import medical_imaging_model
from service.core.model import TERMINAL_WORKFLOW_STATUSES

TERMINAL = TERMINAL_WORKFLOW_STATUSES
UPDATE = "UpdateImageSetMetadata"
GET_IMAGE_SET = "GetImageSet"
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    # Each channel its own connection, so several channels spread streams over connections.
    ("grpc.use_local_subchannel_pool", 1),
)


def attributes(sequence: int) -> bytes:
    """The updatable-attributes blob of update number `sequence`."""
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": f"BENCH {sequence}"}}}
    return json.dumps(document, separators=(",", ":")).encode()


def grpc_request(
    datastore_id: str, image_set_id: str, version: str, sequence: int, idempotency_key: str = ""
) -> pb.UpdateImageSetMetadataRequest:
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=datastore_id,
        image_set_id=image_set_id,
        latest_version_id=version,
        dicom_updates=pb.DICOMUpdates(updatable_attributes=attributes(sequence)),
        idempotency_key=idempotency_key,
    )


def aws_params(datastore_id: str, image_set_id: str, version: str, sequence: int) -> dict[str, Any]:
    """The same update as `grpc_request`, as UpdateImageSetMetadata parameters."""
    return {
        "datastoreId": datastore_id,
        "imageSetId": image_set_id,
        "latestVersionId": version,
        "updateImageSetMetadataUpdates": {
            "DICOMUpdates": {"updatableAttributes": attributes(sequence)}
        },
    }


def caller(principal: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata naming the caller (the benchmark stacks use development identity)."""
    return (("x-dev-principal", principal),)


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


@asynccontextmanager
async def direct_client(emulator_url: str, connections: int) -> AsyncIterator[Any]:
    """An aioboto3 HealthImaging client configured as the proxy configures its own."""
    session = aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="emulator", aws_secret_access_key="emulator"
    )
    medical_imaging_model.install(session._session)
    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=connections,
        inject_host_prefix=False,
    )
    async with session.client(
        "medical-imaging", endpoint_url=emulator_url, config=config
    ) as client:
        yield client


def event_kind(event: pb.UpdateEvent) -> str:
    return event.WhichOneof("event") or ""
