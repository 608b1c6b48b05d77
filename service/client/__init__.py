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
    UpdateNotApproved,
)
from service.client.events import (
    ApprovalRequired,
    Approved,
    AttributeChange,
    Authorized,
    Cancelled,
    Evaluation,
    Expired,
    Finished,
    Heartbeat,
    ImageSetState,
    OperationSummary,
    Queued,
    Rejected,
    Retrying,
    Status,
    Submitted,
    UpdateEvent,
    Why,
)
from service.client.sync import SyncMetadataUpdateClient

__all__ = [
    "ApprovalRequired",
    "Approved",
    "AttributeChange",
    "Authorized",
    "Cancelled",
    "ClientError",
    "Credentials",
    "DeadlineExceeded",
    "Evaluation",
    "Expired",
    "FieldViolation",
    "Finished",
    "Heartbeat",
    "ImageSetState",
    "MetadataUpdateClient",
    "OperationSummary",
    "PolicyDenied",
    "Queued",
    "Rejected",
    "Retrying",
    "RpcError",
    "Status",
    "Submitted",
    "SyncMetadataUpdateClient",
    "TransportError",
    "UpdateCancelled",
    "UpdateEvent",
    "UpdateNotApproved",
    "Why",
    "build_request",
    "final_state",
]
