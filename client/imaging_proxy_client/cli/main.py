"""The `imaging-proxy` command: the client's AWS-CLI-style verbs, plus every verb another installed
distribution adds through the `imaging_proxy.verbs` entry-point group (the server adds `serve`,
`policy`, `emulator` and `demo`). Installing only the client gives the client verbs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from imaging_proxy_client.cli import approvals, steering, verbs
from imaging_proxy_client.cli.help import version_string

VERB_GROUP = "imaging_proxy.verbs"
"""Entry points of this group are `add(subparsers) -> None` functions that add verbs."""


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command. The verbs of other distributions are loaded unless `argv` names a client
    verb: a service's calls stay as quick with the server installed as without it (the server's
    `demo` loads pydicom)."""
    parser = argparse.ArgumentParser(
        prog="imaging-proxy",
        description="A policy-enforcing gRPC front door for AWS HealthImaging metadata updates.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # --version on one line
    )
    parser.add_argument("--version", action="version", version=version_string())
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_client_verbs(subparsers)
    steering.add_steering_verbs(subparsers)
    approvals.add_approval_verbs(subparsers)
    if argv[:1] and (argv[0] in subparsers.choices or argv[0] == "--version"):
        return parser
    for plugin in sorted(entry_points(group=VERB_GROUP), key=lambda e: e.name):
        try:
            add_verbs = plugin.load()
        except (ImportError, AttributeError) as error:  # a broken install: the rest still works
            sys.stderr.write(f"imaging-proxy: verb {plugin.name!r} not loaded ({error})\n")
            continue
        add_verbs(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    # A verb that parses its own options (the emulator's) takes what argparse did not recognise,
    # including a first argument that looks like an option (`emulator --port 0`); it says so
    # with `set_defaults(rest=[])`.
    args, rest = parser.parse_known_args(argv)
    if rest and not hasattr(args, "rest"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        args.rest = rest
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
