"""The public client library of the imaging proxy: `async with MetadataUpdateClient(...)`.

It depends only on the generated stubs (service._proto) and grpcio/grpcio-status; see
docs/CLIENT.md.
"""

from service.client.client import MetadataUpdateClient, build_request, final_state
from service.client.credentials import Credentials
from service.client.errors import (
    ClientError,
    DeadlineExceeded,
    FieldViolation,
    PolicyDenied,
    RpcError,
    TransportError,
)
from service.client.events import (
    AttributeChange,
    Authorized,
    Evaluation,
    Finished,
    Heartbeat,
    ImageSetState,
    Queued,
    Retrying,
    Status,
    Submitted,
    UpdateEvent,
)
from service.client.sync import SyncMetadataUpdateClient

__all__ = [
    "AttributeChange",
    "Authorized",
    "ClientError",
    "Credentials",
    "DeadlineExceeded",
    "Evaluation",
    "FieldViolation",
    "Finished",
    "Heartbeat",
    "ImageSetState",
    "MetadataUpdateClient",
    "PolicyDenied",
    "Queued",
    "Retrying",
    "RpcError",
    "Status",
    "Submitted",
    "SyncMetadataUpdateClient",
    "TransportError",
    "UpdateEvent",
    "build_request",
    "final_state",
]
