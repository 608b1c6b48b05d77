"""The public client library of the imaging proxy: `async with MetadataUpdateClient(...)`.

It depends only on its generated stubs (`imaging_proxy_client.stubs`), grpcio and grpcio-status; see
docs/CLIENT.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imaging_proxy_client.client import MetadataUpdateClient, build_request, final_state
    from imaging_proxy_client.credentials import Credentials
    from imaging_proxy_client.errors import (
        ClientError,
        DeadlineExceeded,
        FieldViolation,
        PolicyDenied,
        RpcError,
        TransportError,
        UpdateCancelled,
        UpdateNotApproved,
    )
    from imaging_proxy_client.events import (
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
    from imaging_proxy_client.sync import SyncMetadataUpdateClient

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

_HOMES = ("client", "credentials", "errors", "events", "sync")


def __getattr__(name: str) -> object:
    """The public names load on first use: importing the package loads no grpc, so that the
    `imaging-proxy` command can set GRPC_VERBOSITY before gRPC core reads it (cli/__init__.py)."""
    if name in __all__:
        for home in _HOMES:
            module = importlib.import_module(f"{__name__}.{home}")
            if hasattr(module, name):
                value: object = getattr(module, name)
                globals()[name] = value  # found once: later lookups are plain attributes
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
