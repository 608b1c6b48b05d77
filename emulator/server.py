"""Starting and stopping the HTTP server: seed, listen, check it answers, clean up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from emulator.app import create_app
from emulator.appkeys import BACKEND
from emulator.config import Settings
from emulator.models import Backend
from emulator.seeding import ensure_datastore, seed


@dataclass(frozen=True)
class Running:
    """A listening emulator."""

    url: str
    datastore_id: str
    image_set_ids: tuple[str, ...]
    backend: Backend

    def ready_document(self) -> dict[str, Any]:
        """What `--ready-file` holds."""
        return {
            "url": self.url,
            "datastoreId": self.datastore_id,
            "imageSetIds": list(self.image_set_ids),
        }


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """Seeds, listens and yields once the server answers HTTP; stops it on exit."""
    app = create_app(settings)
    backend = app[BACKEND]
    if settings.seeds:
        datastore_id, image_sets = seed(
            backend, settings.seeds, settings.datastore_id, is_primary=settings.seed_primary
        )
    else:
        datastore_id, image_sets = ensure_datastore(backend, settings.datastore_id), []
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        url = f"http://{settings.host}:{runner.addresses[0][1]}"
        await _wait_until_answering(url)
        yield Running(url, datastore_id, tuple(s.image_set_id for s in image_sets), backend)
    finally:
        await runner.cleanup()


async def _wait_until_answering(url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/_emulator/health") as response,
    ):
        response.raise_for_status()
