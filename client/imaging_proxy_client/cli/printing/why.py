"""The options that say why an update is asked for (--purpose-of-use, --justification,
--ticket, --break-glass) on update-image-set-metadata and evaluate-update: the proxy's own, not
part of the AWS CLI's shape."""

from __future__ import annotations

import argparse

from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2


def add_why_options(parser: argparse.ArgumentParser) -> None:
    """Why the update is asked for: facts the policy may require (not part of the AWS shape)."""
    group = parser.add_argument_group("why options (the proxy's, not the AWS CLI's)")
    group.add_argument(
        "--purpose-of-use",
        metavar="<value>",
        help="(string) An HL7 v3 PurposeOfUse code: TREAT, ETREAT, HOPERAT, PATADMIN, BTG, ...",
    )
    group.add_argument(
        "--justification",
        metavar="<value>",
        help="(string) Why, in words (at most 1,000 characters). It may name a patient: the proxy"
        " keeps it sealed in its journal; the policy sees its length, the audit its digest.",
    )
    group.add_argument("--ticket", metavar="<value>", help="(string) A ticket reference.")
    group.add_argument(
        "--break-glass",
        action="store_true",
        help="Go ahead without an approval the policy would require (a break-glass role and a "
        "--justification needed); audited and reviewed afterwards.",
    )


def apply_why(
    args: argparse.Namespace, request: metadata_pb2.UpdateImageSetMetadataRequest
) -> None:
    request.purpose_of_use = args.purpose_of_use or ""
    request.justification = args.justification or ""
    request.ticket = args.ticket or ""
    request.break_glass = bool(args.break_glass)
