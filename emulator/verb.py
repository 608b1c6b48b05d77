"""`imaging-proxy emulator …`: the emulator as a verb of the server's command (an
`imaging_proxy.verbs` entry point). Light on purpose: every `imaging-proxy` call loads it, and the
emulator itself (aiohttp, pydicom) loads only when the verb runs."""

from __future__ import annotations

import argparse


def add_emulator_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The options, --help included, are emulator.cli's own, handed over as given (`rest`)."""
    verb = verbs.add_parser("emulator", help="run the local HealthImaging emulator", add_help=False)
    verb.set_defaults(run=_run, rest=[])


def _run(args: argparse.Namespace) -> int:
    from emulator.cli import main

    return main(args.rest)
