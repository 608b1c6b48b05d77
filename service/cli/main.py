"""The `imaging-proxy` command: server verbs (serve, emulator, demo) and AWS-CLI-style verbs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

SERVER_VERBS = frozenset({"serve", "emulator", "demo"})


def build_parser() -> argparse.ArgumentParser:
    # Imported here, after `_quiet_grpc_core`: gRPC core reads GRPC_VERBOSITY when it loads.
    from service.cli import serve
    from service.cli.client import approvals, steering, verbs

    parser = argparse.ArgumentParser(
        prog="imaging-proxy",
        description="A policy-enforcing gRPC front door for AWS HealthImaging metadata updates.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    serve.add_server_verbs(subparsers)
    verbs.add_client_verbs(subparsers)
    steering.add_steering_verbs(subparsers)
    approvals.add_approval_verbs(subparsers)
    return parser


def _quiet_grpc_core(args: Sequence[str]) -> None:
    """A client verb prints the AWS CLI's error lines, not gRPC core's handshake log lines
    (e.g. "ssl_transport_security.cc ... Handshake failed"); --debug (or GRPC_VERBOSITY set by
    the user) keeps them."""
    client_verb = bool(args[:1]) and args[0] not in SERVER_VERBS
    if client_verb and "--debug" not in args and not os.environ.get("GRPC_VERBOSITY"):
        os.environ["GRPC_VERBOSITY"] = "NONE"


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    _quiet_grpc_core(args_list)
    if args_list[:1] == ["emulator"]:
        from service.cli import serve

        # The emulator parses its own options (and --help): argparse's REMAINDER would refuse
        # a first argument that looks like an option (`emulator --port 0`).
        sys.exit(serve.run_emulator_args(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
