"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web
from aiolimiter import AsyncLimiter

from emulator.models import Backend
from emulator.request_log import RequestLog

BACKEND = web.AppKey("backend", Backend)
REQUEST_LOG = web.AppKey("request_log", RequestLog)
LIMITERS = web.AppKey("limiters", dict[str, AsyncLimiter])
