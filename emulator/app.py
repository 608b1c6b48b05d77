"""The aiohttp application: API routes from the model, fault injection, quotas, the request log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiolimiter import AsyncLimiter

from emulator import admin
from emulator.appkeys import BACKEND, LIMITERS, REQUEST_LOG
from emulator.config import Settings
from emulator.exceptions import EmulatorError, InternalServerException, ThrottlingException
from emulator.models import Backend
from emulator.protocol import parse_request, serialize_response
from emulator.request_log import LoggedRequest, RequestLog
from emulator.responses import HANDLERS
from emulator.spec import operation
from emulator.urls import api_routes


def create_app(settings: Settings, backend: Backend | None = None) -> web.Application:
    app = web.Application(middlewares=[_api_middleware], client_max_size=64 * 1024 * 1024)
    app[BACKEND] = backend or Backend(settings)
    app[REQUEST_LOG] = RequestLog()
    app[LIMITERS] = {
        op: AsyncLimiter(limit.burst, limit.burst / limit.rate)
        for op, limit in settings.quotas.tps.items()
    }
    for route in api_routes():
        if route.operation in HANDLERS:
            app.router.add_route(
                route.method, route.path, _endpoint(route.operation), name=route.operation
            )
    admin.add_routes(app)
    return app


def _endpoint(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    op = operation(name)
    handler = HANDLERS[name]

    async def endpoint(request: web.Request) -> web.StreamResponse:
        query = {key: request.query.getall(key) for key in request.query}
        params = parse_request(op, dict(request.match_info), query, await request.read())
        headers, body = serialize_response(op, handler(request.app[BACKEND], params))
        return web.Response(body=body, headers=headers, status=op.http.get("responseCode", 200))

    return endpoint


@web.middleware
async def _api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    route_name = request.match_info.route.name
    if route_name is None or route_name not in HANDLERS:
        return await handler(request)
    at = time.time()
    status, error = 0, None
    try:
        response = await _with_faults(request, route_name, handler)
        status = response.status
        return response
    except EmulatorError as exc:
        status, error = exc.status, exc.code
        return error_response(exc)
    except _ConnectionDropped:
        # The transport is already aborted; aiohttp ignores writes to it (status 0 in the log).
        return web.Response(status=204)
    finally:
        request.app[REQUEST_LOG].add(_log_entry(request, route_name, status, at, error))


async def _with_faults(
    request: web.Request, name: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refusals (drops, throttles, errors) are decided first and apply nothing. A request that
    has fully arrived is then applied at once, in a task of its own, so a client that goes away
    during the injected latency cannot cancel it: a real server that holds a request applies it.
    Latency and the answer faults delay or lose only the answer."""
    backend = request.app[BACKEND]
    faults = backend.faults
    applies = faults.applies_to(name)
    delay = faults.latency_ms + backend.rng.uniform(0, faults.jitter_ms) if applies else 0.0
    if applies:
        roll = backend.rng.random()
        refused = faults.drop_rate + faults.throttle_rate + faults.error_rate
        if roll < refused:
            await asyncio.sleep(delay / 1000)
        if roll < faults.drop_rate:
            _drop(request)
        if roll < faults.drop_rate + faults.throttle_rate:
            raise ThrottlingException("Rate exceeded (injected)")
        if roll < refused:
            raise InternalServerException("Internal server error (injected)")
    await _take_token(request, name)
    await request.read()  # the whole request has arrived before it is applied
    applied = asyncio.ensure_future(handler(request))
    response = await asyncio.shield(applied)
    if not applies:
        return response
    await asyncio.sleep((delay + faults.answer_delay_ms) / 1000)
    if backend.rng.random() < faults.answer_drop_rate:
        _drop(request)
    return response


class _ConnectionDropped(Exception):
    """The fault knobs closed the connection instead of answering."""


def _drop(request: web.Request) -> None:
    """Close the connection without an answer, as a network failure would."""
    if request.transport is not None:
        request.transport.abort()
    raise _ConnectionDropped


async def _take_token(request: web.Request, name: str) -> None:
    settings = request.app[BACKEND].settings
    limiter = request.app[LIMITERS].get(name)
    if not settings.quotas.enforce or limiter is None:
        return
    if not limiter.has_capacity():
        raise ThrottlingException("Rate exceeded")
    await limiter.acquire()


def error_response(exc: EmulatorError) -> web.Response:
    """Status, `x-amzn-ErrorType` and a JSON `message`: botocore then raises the same class."""
    return web.Response(
        status=exc.status,
        body=json.dumps({"message": exc.message}).encode(),
        headers={"Content-Type": "application/json", "x-amzn-ErrorType": exc.code},
    )


def _log_entry(
    request: web.Request, name: str, status: int, at: float, error: str | None
) -> LoggedRequest:
    info = request.match_info
    image_set = info.get("imageSetId") or info.get("sourceImageSetId")
    return LoggedRequest(name, info.get("datastoreId"), image_set, status, at, error)
