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
    UpdateCancelled,
)
from service.client.events import (
    AttributeChange,
    Authorized,
    Cancelled,
    Evaluation,
    Finished,
    Heartbeat,
    ImageSetState,
    OperationSummary,
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
    "Cancelled",
    "ClientError",
    "Credentials",
    "DeadlineExceeded",
    "Evaluation",
    "FieldViolation",
    "Finished",
    "Heartbeat",
    "ImageSetState",
    "MetadataUpdateClient",
    "OperationSummary",
    "PolicyDenied",
    "Queued",
    "Retrying",
    "RpcError",
    "Status",
    "Submitted",
    "SyncMetadataUpdateClient",
    "TransportError",
    "UpdateCancelled",
    "UpdateEvent",
    "build_request",
    "final_state",
]
