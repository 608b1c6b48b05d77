"""OPA's own API through opa-python-client's AsyncOpaClient: health for readiness, waiting for
OPA at start-up, and the policy operations behind `imaging-proxy policy` (status, push, pull)
for operators who run OPA without bundles.

Decisions do not go through it (service/policy/decisions.py; docs/POLICIES.md, "The OPA client",
says why).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from opa_client import AsyncOpaClient
from opa_client.errors import PolicyNotFoundError

from service.core.config import OpaSettings
from service.policy.decisions import opa_address, opa_headers, opa_tls

POLICY_SUFFIX = ".rego"
TEST_SUFFIX = "_test.rego"
DATA_FILE = "data.json"


class OpaAdmin(AsyncOpaClient):  # type: ignore[misc]  # the library ships no type hints
    """AsyncOpaClient on the proxy's [opa] settings: no retries (OPA's errors repeat), one
    timeout, and a session that honours `ca_file`, the client certificate and the token.

    The library has no CA-file option (upstream issue #32): its session is built in
    `_init_session`, which is replaced here, once, with the proxy's own TLS context."""

    def __init__(self, settings: OpaSettings, timeout_seconds: float) -> None:
        scheme, host, port = opa_address(settings)
        super().__init__(
            host=host,
            port=port,
            ssl=scheme == "https",
            headers=opa_headers(settings),
            retries=0,
            timeout=timeout_seconds,
        )
        self._tls = opa_tls(settings)

    async def _init_session(self) -> None:
        self._session = aiohttp.ClientSession(
            headers=self.headers,
            connector=aiohttp.TCPConnector(ssl=self._tls or True),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    async def answers(self) -> bool:
        """Readiness's probe (health.Probe): GET /health answered 200 within the timeout."""
        return bool(await self.check_health())


@dataclass(frozen=True)
class PolicyFiles:
    """A policy folder as OPA's API takes it: Rego files by id (their relative path) and the
    top-level documents of data.json. Tests (`*_test.rego`) stay behind."""

    policies: dict[str, str]
    data: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> PolicyFiles:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        policies = {
            path.relative_to(folder).as_posix(): path.read_text()
            for path in sorted(folder.rglob(f"*{POLICY_SUFFIX}"))
            if not path.name.endswith(TEST_SUFFIX)
        }
        data_file = folder / DATA_FILE
        data = json.loads(data_file.read_text()) if data_file.is_file() else {}
        if not isinstance(data, dict):
            raise ValueError(f"{data_file} is not a JSON object")
        return cls(policies, data)

    def write(self, folder: Path) -> list[Path]:
        written = []
        for policy_id, text in self.policies.items():
            path = folder / policy_id
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
        if self.data:
            (folder / DATA_FILE).write_text(json.dumps(self.data, indent=2) + "\n")
            written.append(folder / DATA_FILE)
        return written


async def push(client: OpaAdmin, files: PolicyFiles) -> list[str]:
    """Each policy under its id, then each top-level data document under its key (a PUT
    replaces that document whole); what was pushed, in order."""
    pushed = []
    for policy_id, text in files.policies.items():
        await client.update_policy_from_string(text, policy_id, rego_compat=False)
        pushed.append(f"policy {policy_id}")
    for key, document in files.data.items():
        if not isinstance(document, dict):
            raise ValueError(f"data.json: {key!r} is not an object (OPA's data API takes objects)")
        await client.update_or_create_data(document, key)
        pushed.append(f"data {key}")
    return pushed


async def pull(client: OpaAdmin, data_roots: Sequence[str]) -> PolicyFiles:
    """Every policy OPA holds (by id) and the named top-level data documents, without what the
    policies compute: OPA's data API answers base and rule-made documents as one tree, and a
    package may share its path with base data (`package imaging.approvals` beside
    `data.imaging.approvals.rules`), so only the rules' own keys are taken out."""
    policies, computed = {}, []
    for policy_id in await client.get_policies_list():
        answer = (await client.get_policy(policy_id))["result"]
        policies[policy_id] = str(answer["raw"])
        computed.append(_rule_keys(answer["ast"]))
    data = {root: (await client.get_data(root))["result"] for root in data_roots}
    for package, rules in computed:
        _drop(data, package, rules)
    return PolicyFiles(policies, data)


def _rule_keys(ast: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """A parsed module's package path (below `data`) and the names its rules define there."""
    package = [str(term["value"]) for term in ast["package"]["path"][1:]]
    rules = {str(rule["head"]["ref"][0]["value"]) for rule in ast.get("rules", [])}
    return package, rules


def _drop(tree: dict[str, Any], package: list[str], rules: set[str]) -> None:
    """Remove the documents `rules` make at `package`, and the folders that leaves empty."""
    parents = [tree]
    for key in package:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    for name in rules:
        parents[-1].pop(name, None)
    for key, parent in zip(reversed(package), reversed(parents[:-1]), strict=True):
        if parent.get(key) == {}:
            del parent[key]


async def status(client: OpaAdmin, data_roots: Sequence[str]) -> dict[str, Any]:
    """Whether OPA is healthy, the policies it holds and which data roots are loaded."""
    if not await client.check_health():
        return {"healthy": False}
    loaded = {}
    for root in data_roots:
        try:
            loaded[root] = bool((await client.get_data(root))["result"])
        except PolicyNotFoundError:
            loaded[root] = False
    return {"healthy": True, "policies": await client.get_policies_list(), "data": loaded}
