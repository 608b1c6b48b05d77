"""Policy stage: asks OPA about a caller and an update plan; OPA's answer becomes a Decision.

Fail closed: OPA unreachable, slower than its timeout, erroring, undefined or malformed all raise
PolicyUnavailable; only a well-formed `{"allow": true}` lets an update through.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl

from service.core.config import OpaSettings
from service.core.errors import PolicyUnavailable
from service.core.model import (
    ApprovalNeed,
    Caller,
    Decision,
    DecisionIdSource,
    UpdatePlan,
    decision_id,
)
from service.policy.policy_input import build_input, caller_input


@dataclass(frozen=True)
class RoleAnswer:
    """OPA's answer to "which roles does this caller hold on this data store?"."""

    roles: frozenset[str] | None
    """None when the policy leaves `data.imaging.caller.roles` undefined (not known: no roles)."""
    decision_id: str
    decision_id_source: DecisionIdSource = "opa"


def parse_result(response: Mapping[str, Any]) -> Decision:
    """OPA's HTTP answer → Decision; anything but a well-formed decision object is unusable."""
    result = response.get("result")
    if not isinstance(result, Mapping):
        raise PolicyUnavailable("policy decision is undefined (no result from OPA)", "undefined")
    allow, reasons = result.get("allow"), result.get("reasons", [])
    if not isinstance(allow, bool):
        raise PolicyUnavailable("policy decision is malformed: 'allow' is not a boolean")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise PolicyUnavailable("policy decision is malformed: 'reasons' is not a list of strings")
    given = response.get("decision_id", "")  # absent when decision logging is off
    if not isinstance(given, str):
        raise PolicyUnavailable("policy decision is malformed: 'decision_id' is not a string")
    break_glass = result.get("break_glass", False)
    if not isinstance(break_glass, bool):
        raise PolicyUnavailable("policy decision is malformed: 'break_glass' is not a boolean")
    approval = _approval_need(result.get("approval")) if not allow else None
    return Decision(
        allow,
        tuple(reasons),
        *decision_id(given),
        approval=approval,
        break_glass=break_glass and allow,
    )


MAX_APPROVAL_TTL = 30 * 86400.0


def _approval_need(answer: object) -> ApprovalNeed | None:
    """`approval` of a decision that does not allow (yet): who may approve, how many, how long.
    Absent: a plain denial. Present but unusable: no decision at all (fail closed)."""
    if answer is None:
        return None
    if not isinstance(answer, Mapping):
        raise PolicyUnavailable("policy decision is malformed: 'approval' is not an object")
    approvers = answer.get("approvers")
    approvers = approvers if isinstance(approvers, Mapping) else {}
    roles, principals = (
        _strings(approvers.get("roles", [])),
        _strings(approvers.get("principals", [])),
    )
    count, ttl = answer.get("count", 1), answer.get("ttl_seconds")
    if roles is None or principals is None or not (roles or principals):
        raise PolicyUnavailable("policy decision is malformed: 'approval.approvers' names nobody")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
        raise PolicyUnavailable("policy decision is malformed: 'approval.count' is not 1 to 10")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_APPROVAL_TTL:
        raise PolicyUnavailable("policy decision is malformed: 'approval.ttl_seconds' is not 0-30d")
    return ApprovalNeed(tuple(sorted(roles)), tuple(sorted(principals)), count, float(ttl))


def _strings(value: object) -> list[str] | None:
    """`value` if it is a list of strings, else None."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def opa_address(settings: OpaSettings) -> tuple[str, str, int]:
    """(scheme, host, port) of OPA, as the decision client and the readiness probe both reach it
    (host and port only, no path; 8181 when the URL names no port)."""
    url = urlsplit(settings.url)
    scheme = "https" if url.scheme == "https" else "http"
    return scheme, url.hostname or "127.0.0.1", url.port or (443 if scheme == "https" else 8181)


def opa_tls(settings: OpaSettings) -> ssl.SSLContext | None:
    """TLS to OPA (https only): `ca_file` (else the system's roots) and the client certificate."""
    if opa_address(settings)[0] != "https":
        return None
    context = ssl.create_default_context(cafile=settings.ca_file or None)
    if settings.client_cert:
        context.load_cert_chain(settings.client_cert, settings.client_key or None)
    return context


def opa_headers(settings: OpaSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.token}"} if settings.token else {}


class PolicyClient:
    """Asks OPA for decisions over one long-lived, kept-alive HTTP session.

    OPA's data API is one POST of `{"input": ...}`: plain aiohttp, URLs built once, redirects
    refused (opa-python-client's query_rule would follow them: docs/POLICIES.md, "The OPA
    client"; it serves readiness and the policy verbs, service/policy/opa_admin.py)."""

    def __init__(self, session: aiohttp.ClientSession, settings: OpaSettings) -> None:
        self._session = session
        self._settings = settings
        scheme, host, port = opa_address(settings)
        self._base = f"{scheme}://{host}:{port}/v1/data/"
        self._decision_url = self._url(settings.decision_path)
        self._roles_url = self._url("imaging.caller.roles")
        self._operations_url = self._url("imaging.operations.decision")

    def _url(self, dotted: str) -> yarl.URL:
        return yarl.URL(self._base + dotted.replace(".", "/"), encoded=True)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: OpaSettings) -> AsyncIterator[PolicyClient]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=opa_tls(settings) or True),
            headers={**opa_headers(settings), "Content-Type": "application/json"},
        )
        async with session:
            yield cls(session, settings)

    async def decide(
        self, caller: Caller, plan: UpdatePlan, approved_by: tuple[str, ...] = ()
    ) -> Decision:
        """`approved_by`: who has approved the update so far (deciding it again)."""
        return await self._query(self.input_for(caller, plan, approved_by))

    def input_for(
        self, caller: Caller, plan: UpdatePlan, approved_by: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The very input `decide` sends to OPA for this caller and plan."""
        return build_input(caller, plan, self._settings.send_values, approved_by)

    async def permits(
        self, caller: Caller, action: str, datastore_id: str, facts: Mapping[str, Any]
    ) -> Decision:
        """`data.imaging.operations.decision`: may the caller do `action` on what is not its own
        (an operation, a listing, a policy input)? `facts` name it (no patient data)."""
        document = {
            "action": action,
            "caller": caller_input(caller),
            "request": {"datastore_id": datastore_id},
            **facts,
        }
        return parse_result(await self._post(document, self._operations_url))

    async def roles(self, caller: Caller, datastore_id: str) -> frozenset[str]:
        """The caller's effective roles on a data store (`data.imaging.caller.roles`): grants
        live in OPA's data, so OPA is asked, not the token alone. An undefined answer is none."""
        return (await self.role_answer(caller, datastore_id)).roles or frozenset()

    async def role_answer(self, caller: Caller, datastore_id: str) -> RoleAnswer:
        """`roles`, with OPA's decision id, and None when the policy leaves the rule undefined."""
        document = {"caller": caller_input(caller), "request": {"datastore_id": datastore_id}}
        response = await self._post(document, self._roles_url)
        result = response.get("result")
        roles = (
            frozenset(role for role in result if isinstance(role, str))
            if isinstance(result, list)
            else None
        )
        return RoleAnswer(roles, *decision_id(response.get("decision_id")))

    async def _query(self, document: Mapping[str, Any]) -> Decision:
        return parse_result(await self._post(document, self._decision_url))

    async def _post(self, document: Mapping[str, Any], url: yarl.URL) -> Mapping[str, Any]:
        """One OPA query within the timeout; any failure is PolicyUnavailable (fail closed).
        OPA's errors (evaluation errors, bad input) repeat if retried: none is."""
        body = json.dumps({"input": document}, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                # A redirect is not a decision: it is refused like any answer but 200.
                async with self._session.post(url, data=body, allow_redirects=False) as response:
                    if response.status != 200:
                        message = f"policy engine answered HTTP {response.status}"
                        raise PolicyUnavailable(message, "http_error")
                    answer = json.loads(await response.read())
        except TimeoutError as exc:
            raise PolicyUnavailable("policy decision timed out", "timeout") from exc
        except (aiohttp.ClientError, OSError) as exc:
            message = f"policy engine unavailable: {type(exc).__name__}"
            raise PolicyUnavailable(message, "unreachable") from exc
        except ValueError as exc:  # not JSON
            raise PolicyUnavailable(f"policy engine unavailable: {type(exc).__name__}") from exc
        if not isinstance(answer, Mapping):
            raise PolicyUnavailable("policy decision is malformed: not a JSON object")
        return answer
