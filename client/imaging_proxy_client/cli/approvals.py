"""The four-eyes verbs: approve-update, reject-update and review-update (ApproveUpdate,
RejectUpdate, ReviewUpdate), with the AWS CLI's output options and return codes."""

from __future__ import annotations

import argparse
from typing import Any

from imaging_proxy_client.cli import help as client_help
from imaging_proxy_client.cli.parameters import shapes
from imaging_proxy_client.cli.steering import one_operation
from imaging_proxy_client.cli.verbs import (
    add_common_options,
    add_verb,
    guarded,
)
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

_VERDICT_INPUT = shapes.Shape(
    "input",
    "structure",
    members=(
        shapes.Shape("operationId", "string", "The operation, as printed by the update.", True),
        shapes.Shape("comment", "string", "Why (at most 1,000 characters; audited as a digest)."),
    ),
)
_SYNOPSIS = (
    "%(prog)s\n  --operation-id <value>\n  [--comment <value>]\n" + client_help.STEERING_SYNOPSIS
)
_TAIL = "\n".join((client_help.OUTPUT_SECTION, client_help.RETURN_CODES, client_help.ENVIRONMENT))
_VERBS = (
    (
        "approve-update",
        "ApproveUpdate",
        client_help.VerbHelp(
            summary="Approve another's update that awaits approval.",
            description=(
                "Give an approval the policy asked for (policies/imaging/approvals.rego): only a\n"
                "principal the policy names as approver may, never the requester. The last\n"
                "approval needed decides the update again and reads the image set: unchanged, the\n"
                "update queues (state queued) and its requester's stream goes on to `finished`;\n"
                "changed since the request, it ends failed (Aborted, IMAGE_SET_CHANGED), nothing\n"
                "written. Prints the operation as get-update does."
            ),
            epilog="EXAMPLE\n  imaging-proxy approve-update --operation-id "
            "0b6c0c3e-2f5a-4f0e-9a53-2d3b1c7f9e10 --comment 'checked HIM-42'\n\n" + _TAIL,
            synopsis=_SYNOPSIS,
        ),
    ),
    (
        "reject-update",
        "RejectUpdate",
        client_help.VerbHelp(
            summary="Reject another's update that awaits approval; nothing is written.",
            description=(
                "End an update awaiting approval as `rejected` (whom the policy names as\n"
                "approver, never the requester): its streams end, HealthImaging is never called."
            ),
            epilog=_TAIL,
            synopsis=_SYNOPSIS,
        ),
    ),
    (
        "review-update",
        "ReviewUpdate",
        client_help.VerbHelp(
            summary="Mark another's ended break-glass update reviewed.",
            description=(
                "Break-glass updates went ahead without the approval the policy asks for; they\n"
                "show in `list-updates --break-glass`. A reviewer (role break-glass-reviewer in\n"
                "the shipped policy, never the requester) marks one reviewed once it has ended."
            ),
            epilog=_TAIL,
            synopsis=_SYNOPSIS,
        ),
    ),
)


def add_approval_verbs(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register approve-update, reject-update and review-update on the `imaging-proxy` command."""
    for name, method, text in _VERBS:
        verb = add_verb(subparsers, name, text)
        verb.add_argument("--operation-id", metavar="<value>", help=client_help.OPERATION_ID)
        verb.add_argument("--comment", metavar="<value>", help=_VERDICT_INPUT.members[1].doc)
        add_common_options(verb, skeleton=False)
        verb.set_defaults(run=lambda args, method=method: guarded(args, _verdict(method)))


def _verdict(method: str) -> Any:
    request_type = getattr(metadata_pb2, f"{method}Request")

    def run(args: argparse.Namespace) -> int:
        given = {"operationId": args.operation_id, "comment": args.comment}
        command_line = {k: v for k, v in given.items() if v is not None}
        return one_operation(
            args,
            method,
            _VERDICT_INPUT,
            command_line,
            lambda merged: request_type(
                operation_id=merged["operationId"], comment=merged.get("comment", "")
            ),
        )

    return run
