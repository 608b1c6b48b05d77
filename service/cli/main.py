"""The `imaging-proxy` command: server verbs (serve, emulator, demo) and AWS-CLI-style verbs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import policy, serve
from service.cli.client import steering, verbs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imaging-proxy",
        description="A policy-enforcing gRPC front door for AWS HealthImaging metadata updates.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    serve.add_server_verbs(subparsers)
    policy.add_policy_verb(subparsers)
    verbs.add_client_verbs(subparsers)
    steering.add_steering_verbs(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        # The emulator parses its own options (and --help): argparse's REMAINDER would refuse
        # a first argument that looks like an option (`emulator --port 0`).
        sys.exit(serve.run_emulator_args(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
