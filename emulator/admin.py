"""The admin endpoint (`/_emulator/...`): request log, faults, seeding, rewinds, stalled work."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aiohttp import web

from emulator.appkeys import BACKEND, REQUEST_LOG
from emulator.config import faults_from_mapping
from emulator.dicom_import import ImportProblem
from emulator.exceptions import EmulatorError
from emulator.seeding import seed
from emulator.urls import ADMIN_PREFIX


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{ADMIN_PREFIX}/health", _health)
    app.router.add_get(f"{ADMIN_PREFIX}/requests", _get_requests)
    app.router.add_delete(f"{ADMIN_PREFIX}/requests", _clear_requests)
    app.router.add_get(f"{ADMIN_PREFIX}/faults", _get_faults)
    app.router.add_put(f"{ADMIN_PREFIX}/faults", _put_faults)
    app.router.add_post(f"{ADMIN_PREFIX}/seed", _seed)
    app.router.add_post(f"{ADMIN_PREFIX}/release-stalled", _release_stalled)
    app.router.add_post(f"{ADMIN_PREFIX}/reset", _reset)
    app.router.add_post(f"{ADMIN_PREFIX}/rewind", _rewind)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _get_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app[REQUEST_LOG].as_json()})


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[REQUEST_LOG].clear()
    return web.json_response({"requests": []})


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(dataclasses.asdict(request.app[BACKEND].faults))


async def _put_faults(request: web.Request) -> web.Response:
    """Replaces every knob: fields left out return to their defaults (no faults)."""
    body = await _json_object(request)
    try:
        faults = faults_from_mapping(body)
    except (TypeError, ValueError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    request.app[BACKEND].set_faults(faults)
    return web.json_response(dataclasses.asdict(faults))


async def _seed(request: web.Request) -> web.Response:
    """{"paths": [...], "datastoreId"?, "imageSetId"?, "isPrimary"?} → the ids created."""
    body = await _json_object(request)
    backend = request.app[BACKEND]
    try:
        datastore_id, image_sets = seed(
            backend,
            [Path(p) for p in body.get("paths", [])],
            body.get("datastoreId"),
            is_primary=bool(body.get("isPrimary", backend.settings.seed_primary)),
            image_set_id=body.get("imageSetId"),
        )
    except (ImportProblem, EmulatorError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(
        {"datastoreId": datastore_id, "imageSetIds": [s.image_set_id for s in image_sets]}
    )


async def _release_stalled(request: web.Request) -> web.Response:
    return web.json_response({"released": request.app[BACKEND].release_stalled()})


async def _reset(request: web.Request) -> web.Response:
    """Drop every data store, image set, job, tag and logged request."""
    request.app[BACKEND].reset()
    request.app[REQUEST_LOG].clear()
    return web.json_response({"reset": True})


async def _rewind(request: web.Request) -> web.Response:
    """{"datastoreId", "imageSetId"} → that image set back at version 1, as it was seeded."""
    body = await _json_object(request)
    backend = request.app[BACKEND]
    backend.tick()  # an update that is due lands first, so it is not mistaken for LOCKED
    try:
        image_set = backend.live_image_set(
            str(body.get("datastoreId")), str(body.get("imageSetId"))
        )
        image_set.rewind()
    except EmulatorError as exc:  # 404 unknown image set, 409 LOCKED
        return web.json_response({"message": exc.message}, status=exc.status)
    return web.json_response({"imageSetId": image_set.image_set_id, "latestVersionId": "1"})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body
