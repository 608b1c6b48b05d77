"""The decision client over real HTTP (an in-process aiohttp server): only OPA's own 200 answer
decides; redirects, errors and silence refuse (fail closed); the token goes with every query."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from service.core.config import OpaSettings
from service.core.errors import PolicyUnavailable
from service.core.model import Caller
from service.normaliser.updates import normalise
from service.policy.decisions import PolicyClient
from tests.unit.operations.inmemory import update_request

ALLOW = {"result": {"allow": True, "reasons": []}, "decision_id": "d-1"}
CALLER = Caller("dev:alice", "dev")
DECISION = "/v1/data/imaging/update/decision"


@dataclass
class StandIn:
    """What the stand-in OPA answers, and what it was sent."""

    url: str = ""
    answer: str = "allow"
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def opa() -> AsyncIterator[StandIn]:
    """A stand-in OPA whose decision route does what `answer` says."""
    stand_in = StandIn()

    async def decision(request: web.Request) -> web.StreamResponse:
        stand_in.seen.append({"auth": request.headers.get("Authorization"), **await request.json()})
        answer = stand_in.answer
        if answer == "redirect":
            raise web.HTTPTemporaryRedirect("/elsewhere")
        if answer == "error":
            return web.json_response({"code": "internal_error"}, status=500)
        if answer == "silent":
            await asyncio.sleep(1)
        return web.json_response(ALLOW)

    async def elsewhere(request: web.Request) -> web.Response:
        return web.json_response(ALLOW)  # what a redirect would lead to: must not count

    app = web.Application()
    app.router.add_post(DECISION, decision)
    app.router.add_post("/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stand_in.url = f"http://127.0.0.1:{port}"
    yield stand_in
    await runner.cleanup()


async def decide(url: str, **settings: Any) -> bool:
    async with PolicyClient.open(OpaSettings(url=url, **settings)) as client:
        return (await client.decide(CALLER, normalise(update_request()))).allow


async def test_opas_200_answer_decides_and_the_token_is_sent(opa: StandIn) -> None:
    assert await decide(opa.url, token="s3cret")
    assert opa.seen[0]["auth"] == "Bearer s3cret"
    assert opa.seen[0]["input"]["caller"]["principal"] == "dev:alice"


@pytest.mark.parametrize(
    ("answer", "cause"),
    [("redirect", "http_error"), ("error", "http_error"), ("silent", "timeout")],
)
async def test_anything_but_opas_own_200_refuses(opa: StandIn, answer: str, cause: str) -> None:
    opa.answer = answer
    with pytest.raises(PolicyUnavailable) as refused:
        await decide(opa.url, timeout_seconds=0.2)
    assert opa.seen  # the query reached it: the refusal is its answer's, not a wrong URL
    assert refused.value.cause == cause  # the bounded word metrics and the audit trail use


async def test_opa_python_client_would_follow_the_redirect_to_an_allow(opa: StandIn) -> None:
    """Why decisions do not go through AsyncOpaClient (docs/POLICIES.md, "The OPA client"): its
    query_rule follows a redirect and hands back whatever answers there. If this starts to fail,
    the library refuses redirects now, and the choice can be made again."""
    from opa_client import AsyncOpaClient

    opa.answer = "redirect"
    port = int(opa.url.rsplit(":", 1)[1])
    async with AsyncOpaClient(host="127.0.0.1", port=port, retries=0, timeout=0.5) as client:
        answer = await client.query_rule({"caller": {}}, "imaging.update", "decision")
    assert answer == ALLOW
