"""`imaging-proxy policy`: OPA's policies and data for operators who run OPA without bundles.

    policy status        health, the policies OPA holds, which data roots are set
    policy push FOLDER   every .rego (not *_test.rego) and data.json's documents
    policy pull FOLDER   what OPA holds, written back as files

`--wait SECONDS` first waits for OPA's health (OPA starting beside the caller).
OPA is reached as the proxy reaches it: `--config` ([opa] url, ca_file, client certificate,
token), then `--opa-url`. Exit codes: 0 done, 1 OPA refused or failed, 2 usage, 3 not healthy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from service.core.config import OpaSettings
from service.core.config_loader import load_settings

NOT_HEALTHY = 3
DATA_ROOTS = ("imaging",)
"""The data documents the shipped policies read (policies/data.json's top level)."""


def add_policy_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = verbs.add_parser(
        "policy",
        help="OPA's policies and data: status, push, pull",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = policy.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="is OPA healthy, what does it hold")
    push = actions.add_parser("push", help="load a policy folder into OPA")
    push.add_argument("folder", type=Path)
    pull = actions.add_parser("pull", help="write OPA's policies and data into a folder")
    pull.add_argument("folder", type=Path)
    for action in (status, push, pull):
        action.add_argument("--config", type=Path, help="the proxy's TOML settings ([opa])")
        action.add_argument("--opa-url", help="OPA base URL (default http://127.0.0.1:8181)")
        action.add_argument("--timeout", type=float, default=5.0, help="seconds per call")
        action.add_argument(
            "--wait", type=float, default=0.0, help="first wait up to this long for OPA's health"
        )
        action.set_defaults(run=run_policy)


def run_policy(args: argparse.Namespace) -> int:
    try:
        overrides = {"opa": {"url": args.opa_url}} if args.opa_url else {}
        settings = load_settings(args.config, overrides).opa
    except (ValueError, OSError) as exc:
        print(f"imaging-proxy policy: bad configuration: {exc}", file=sys.stderr)
        return 2
    action: Callable[[OpaSettings, argparse.Namespace], Coroutine[Any, Any, int]] = {
        "status": _status,
        "push": _push,
        "pull": _pull,
    }[args.action]
    try:
        return asyncio.run(action(settings, args))
    except Exception as exc:  # noqa: BLE001 (the library raises its own types and aiohttp's)
        print(f"imaging-proxy policy {args.action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _status(settings: OpaSettings, args: argparse.Namespace) -> int:
    from service.policy.opa_admin import OpaAdmin, status

    async with OpaAdmin(settings, args.timeout) as client:
        await _wait(client, args.wait)
        report = await status(client, DATA_ROOTS)
    _print(report)
    return 0 if report["healthy"] else NOT_HEALTHY


async def _push(settings: OpaSettings, args: argparse.Namespace) -> int:
    from service.policy.opa_admin import OpaAdmin, PolicyFiles, push

    files = PolicyFiles.read(args.folder)
    async with OpaAdmin(settings, args.timeout) as client:
        await _wait(client, args.wait)
        _print({"pushed": await push(client, files)})
    return 0


async def _pull(settings: OpaSettings, args: argparse.Namespace) -> int:
    from service.policy.opa_admin import OpaAdmin, pull

    async with OpaAdmin(settings, args.timeout) as client:
        await _wait(client, args.wait)
        files = await pull(client, DATA_ROOTS)
    written = files.write(args.folder)
    _print({"written": [str(path) for path in written]})
    return 0


async def _wait(client: Any, seconds: float) -> None:
    """wait_for_ready; not healthy in time is not an error here: the call that follows says it."""
    from opa_client.errors import ConnectionsError

    if seconds > 0:
        with contextlib.suppress(ConnectionsError):
            await client.wait_for_ready(timeout=seconds, interval=0.2)


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2))
