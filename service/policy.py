"""Policy stage: asks OPA about a caller and an update plan; OPA's answer becomes a Decision.

Fail closed: OPA unreachable, slower than its timeout, erroring, undefined or malformed all raise
PolicyUnavailable; only a well-formed `{"allow": true}` lets an update through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client.opa_async import AsyncOpaClient

from service.config import OpaSettings
from service.errors import PolicyUnavailable
from service.model import Caller, Decision, UpdatePlan
from service.policy_input import build_input, caller_input


@dataclass(frozen=True)
class RoleAnswer:
    """OPA's answer to "which roles does this caller hold on this data store?"."""

    roles: frozenset[str] | None
    """None when the policy leaves `data.imaging.caller.roles` undefined (not known: no roles)."""
    decision_id: str


def parse_result(response: Mapping[str, Any]) -> Decision:
    """OPA's HTTP answer → Decision; anything but a well-formed decision object is unusable."""
    result = response.get("result")
    if not isinstance(result, Mapping):
        raise PolicyUnavailable("policy decision is undefined (no result from OPA)")
    allow, reasons = result.get("allow"), result.get("reasons", [])
    if not isinstance(allow, bool):
        raise PolicyUnavailable("policy decision is malformed: 'allow' is not a boolean")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise PolicyUnavailable("policy decision is malformed: 'reasons' is not a list of strings")
    decision_id = response.get("decision_id", "")  # absent when decision logging is off
    if not isinstance(decision_id, str):
        raise PolicyUnavailable("policy decision is malformed: 'decision_id' is not a string")
    return Decision(allow, tuple(reasons), decision_id)


def opa_address(settings: OpaSettings) -> tuple[str, str, int]:
    """(scheme, host, port) of OPA, as the decision client and the readiness probe both reach it
    (opa-python-client keeps only host and port: no path; 8181 when the URL names no port)."""
    url = urlsplit(settings.url)
    scheme = "https" if url.scheme == "https" else "http"
    return scheme, url.hostname or "127.0.0.1", url.port or (443 if scheme == "https" else 8181)


class PolicyClient:
    """Asks OPA for decisions over one long-lived HTTP session."""

    def __init__(self, client: AsyncOpaClient, settings: OpaSettings) -> None:
        self._client = client
        self._settings = settings
        self._package, _, self._rule = settings.decision_path.rpartition(".")

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: OpaSettings) -> AsyncIterator[PolicyClient]:
        scheme, host, port = opa_address(settings)
        cert = (settings.client_cert, settings.client_key) if settings.client_cert else None
        client = AsyncOpaClient(
            host=host,
            port=port,
            ssl=scheme == "https",
            cert=cert,
            token=settings.token or None,
            retries=0,  # OPA's 500s are evaluation errors that repeat: never retry them
            timeout=settings.timeout_seconds,
        )
        async with client:
            yield cls(client, settings)

    async def decide(self, caller: Caller, plan: UpdatePlan) -> Decision:
        return await self._query(build_input(caller, plan, self._settings.send_values))

    async def roles(self, caller: Caller, datastore_id: str) -> frozenset[str]:
        """The caller's effective roles on a data store (`data.imaging.caller.roles`): grants
        live in OPA's data, so OPA is asked, not the token alone. An undefined answer is none."""
        return (await self.role_answer(caller, datastore_id)).roles or frozenset()

    async def role_answer(self, caller: Caller, datastore_id: str) -> RoleAnswer:
        """`roles`, with OPA's decision id, and None when the policy leaves the rule undefined."""
        document = {"caller": caller_input(caller), "request": {"datastore_id": datastore_id}}
        response = await self._post(document, "imaging.caller", "roles")
        result, decision_id = response.get("result"), response.get("decision_id", "")
        roles = (
            frozenset(role for role in result if isinstance(role, str))
            if isinstance(result, list)
            else None
        )
        return RoleAnswer(roles, decision_id if isinstance(decision_id, str) else "")

    async def _query(self, document: Mapping[str, Any]) -> Decision:
        return parse_result(await self._post(document, self._package, self._rule))

    async def _post(
        self, document: Mapping[str, Any], package: str, rule: str
    ) -> Mapping[str, Any]:
        """One OPA query within the timeout; any failure is PolicyUnavailable (fail closed)."""
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                response = await self._client.query_rule(document, package, rule)
        except TimeoutError as exc:
            raise PolicyUnavailable("policy decision timed out") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise PolicyUnavailable(f"policy engine unavailable: {type(exc).__name__}") from exc
        if not isinstance(response, Mapping):
            raise PolicyUnavailable("policy decision is malformed: not a JSON object")
        return response
