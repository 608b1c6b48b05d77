"""An HTTP relay in front of a real OPA that can hold requests back: "slow OPA" as a real fault."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web


class Relay:
    """Forwards every request to `target`; requests whose path starts with `delayed` wait
    `delay` seconds first (the policy API by default; OPA's /health never waits)."""

    def __init__(
        self, target: str, session: aiohttp.ClientSession, delayed: str = "/v1/data"
    ) -> None:
        self.delay = 0.0
        self._target = target
        self._session = session
        self._delayed = delayed

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.startswith(self._delayed) and self.delay:
            await asyncio.sleep(self.delay)  # the fault under test, not a wait for state
        async with self._session.request(
            request.method,
            self._target + request.path_qs,
            data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as upstream:
            return web.Response(
                status=upstream.status,
                body=await upstream.read(),
                headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
            )


async def serve(relay: Relay, cleanup: contextlib.AsyncExitStack) -> int:
    """Serve the relay on a free port until `cleanup` closes; returns the port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    cleanup.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(runner.addresses[0][1])
