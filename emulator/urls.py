"""Routes: every operation's method and request URI, read from the service model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from emulator.spec import service_model

ADMIN_PREFIX = "/_emulator"
_LABEL = re.compile(r"\{(\w+)(\+?)\}")
# Labels whose values contain '/' (ARNs) match greedily.
_GREEDY_LABELS = frozenset({"resourceArn"})


@dataclass(frozen=True)
class Route:
    operation: str
    method: str
    path: str
    """aiohttp path pattern, e.g. /datastore/{datastoreId}."""


def api_routes() -> list[Route]:
    model = service_model()
    routes = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        uri = http["requestUri"].split("?", 1)[0]
        routes.append(Route(name, http["method"], _LABEL.sub(_aiohttp_label, uri)))
    return routes


def _aiohttp_label(match: re.Match[str]) -> str:
    name, greedy = match.group(1), match.group(2)
    return f"{{{name}:.+}}" if greedy or name in _GREEDY_LABELS else f"{{{name}}}"
