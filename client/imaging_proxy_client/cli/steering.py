"""The operator verbs: list-updates, get-update and cancel-update (ListOperations, GetOperation,
CancelUpdate), with the AWS CLI's output options and return codes.

list-updates follows nextToken to the last page as the AWS CLI's auto-pagination does;
--no-paginate prints one page (--max-results, --next-token) and its nextToken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from imaging_proxy_client import engine
from imaging_proxy_client.cli import help as client_help
from imaging_proxy_client.cli.config import resolve_connection
from imaging_proxy_client.cli.connection import Connection
from imaging_proxy_client.cli.errors import INTERRUPTED_RC, ParamValidationError
from imaging_proxy_client.cli.parameters import shapes
from imaging_proxy_client.cli.printing.output import epoch_seconds, image_set_state, print_response
from imaging_proxy_client.cli.verbs import (
    add_common_options,
    add_verb,
    guarded,
    merged_input,
    output_settings,
)
from imaging_proxy_client.errors import ClientError
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

_FILTERS = (
    ("--principal", "principal"),
    ("--datastore-id", "datastoreId"),
    ("--image-set-id", "imageSetId"),
    ("--state", "state"),
    ("--max-results", "maxResults"),
    ("--next-token", "nextToken"),
)
_ONLY_BREAK_GLASS = "Only updates that went ahead without a required approval (to review)."


def add_steering_verbs(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register list-updates, get-update and cancel-update on the `imaging-proxy` command."""
    listing = add_verb(subparsers, "list-updates", client_help.LIST)
    group = listing.add_argument_group("operation options")
    for flag, member in _FILTERS:
        shape = shapes.LIST_INPUT.member(member)
        group.add_argument(flag, metavar="<value>", help=shape.doc if shape else None)
    group.add_argument("--break-glass", action="store_true", help=_ONLY_BREAK_GLASS)
    add_common_options(listing, skeleton=False)
    listing.set_defaults(run=lambda args: guarded(args, _list))
    for name, text, method in (
        ("get-update", client_help.GET, "GetOperation"),
        ("cancel-update", client_help.CANCEL, "CancelUpdate"),
    ):
        verb = add_verb(subparsers, name, text)
        verb.add_argument("--operation-id", metavar="<value>", help=client_help.OPERATION_ID)
        add_common_options(verb, skeleton=False)
        verb.set_defaults(run=lambda args, method=method: guarded(args, _one(method)))


def summary(operation: metadata_pb2.OperationSummary) -> dict[str, Any]:
    """An operation in the AWS CLI's JSON style; empty fields left out."""
    out: dict[str, Any] = {
        "operationId": operation.operation_id,
        "principal": operation.principal,
        "datastoreId": operation.datastore_id,
        "imageSetId": operation.image_set_id,
        "latestVersionId": operation.latest_version_id,
        "kind": operation.kind,
        "state": operation.state,
        "createdAt": epoch_seconds(operation.created_at),
        "decisionId": operation.decision_id,
    }
    if operation.HasField("last_state"):
        out["lastState"] = image_set_state(operation.last_state)
    for key, value in (
        ("errorCode", operation.error_code),
        ("errorMessage", operation.error_message),
        ("cancelledBy", operation.cancelled_by),
        ("purposeOfUse", operation.purpose_of_use),
        ("ticket", operation.ticket),
        ("breakGlass", operation.break_glass),
        ("reviewedBy", operation.reviewed_by),
        ("approvedBy", list(operation.approved_by)),
        ("rejectedBy", operation.rejected_by),
    ):
        if value:
            out[key] = value
    if operation.HasField("approval_expires_at"):
        out["approvalExpiresAt"] = epoch_seconds(operation.approval_expires_at)
    return out


def _list(args: argparse.Namespace) -> int:
    out = output_settings(args, os.environ)
    given = {m: getattr(args, f[2:].replace("-", "_")) for f, m in _FILTERS}
    command_line = {k: v for k, v in given.items() if v is not None}
    merged = shapes.prune(merged_input(args, command_line, shapes.LIST_INPUT), shapes.LIST_INPUT)
    shapes.validate(merged, shapes.LIST_INPUT)
    request = metadata_pb2.ListOperationsRequest(
        principal=merged.get("principal", ""),
        datastore_id=merged.get("datastoreId", ""),
        image_set_id=merged.get("imageSetId", ""),
        state=merged.get("state", ""),
        max_results=_max_results(merged.get("maxResults")),
        next_token=merged.get("nextToken", ""),
        break_glass=args.break_glass,
    )
    conn = resolve_connection(args, os.environ)
    pages = interruptible(_pages(conn, request, every=not args.no_paginate))
    if pages is None:
        return INTERRUPTED_RC
    operations, next_token = pages
    response: dict[str, Any] = {"operations": [summary(o) for o in operations]}
    if next_token:
        response["nextToken"] = next_token
    print_response(response, "ListOperations", out)
    return 0


def _max_results(value: object) -> int:
    if value is None:
        return 0
    try:
        number = int(str(value))
    except ValueError:
        number = -1
    if not 1 <= number <= 1000:
        raise ParamValidationError([f"Invalid value for parameter maxResults: {value!r} (1-1000)"])
    return number


async def _pages(
    conn: Connection, request: metadata_pb2.ListOperationsRequest, every: bool
) -> tuple[list[metadata_pb2.OperationSummary], str]:
    operations: list[metadata_pb2.OperationSummary] = []
    while True:
        page = await call(conn, "ListOperations", request)
        operations.extend(page.operations)
        if not every or not page.next_token:
            return operations, page.next_token
        request.next_token = page.next_token


def _one(method: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        command_line = {} if args.operation_id is None else {"operationId": args.operation_id}
        request_type = (
            metadata_pb2.GetOperationRequest
            if method == "GetOperation"
            else metadata_pb2.CancelUpdateRequest
        )
        return one_operation(
            args,
            method,
            shapes.WATCH_INPUT,
            command_line,
            lambda merged: request_type(operation_id=merged["operationId"]),
        )

    return run


def one_operation(
    args: argparse.Namespace,
    method: str,
    shape: shapes.Shape,
    command_line: dict[str, Any],
    request_of: Callable[[dict[str, Any]], Any],
) -> int:
    """A verb on one operation: its input merged and validated against `shape`, one call, the
    operation's summary printed."""
    out = output_settings(args, os.environ)
    merged = shapes.prune(merged_input(args, command_line, shape), shape)
    shapes.validate(merged, shape)
    conn = resolve_connection(args, os.environ)
    answer = interruptible(call(conn, method, request_of(merged)))
    if answer is None:
        return INTERRUPTED_RC
    print_response(summary(answer), method, out)
    return 0


async def call(conn: Connection, method: str, request: Any) -> Any:
    try:
        return await engine.unary(conn.settings, method, request)
    except ClientError as error:
        raise conn.error(error, method) from None


def interruptible(work: Any) -> Any:
    try:
        return asyncio.run(work)
    except KeyboardInterrupt:
        sys.stderr.write("\nInterrupted.\n")
        return None
