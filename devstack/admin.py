"""Local stack: the emulator's admin endpoint (request log, fault knobs, stalled updates)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EmulatorAdmin:
    """Calls `/_emulator/...` on a running emulator."""

    url: str
    """The emulator's base URL, e.g. http://127.0.0.1:PORT."""
    timeout: float = 10.0

    def admin(self, method: str, path: str, body: object = None) -> Any:
        """One admin call; its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.load(response)

    def requests(self, operation: str = "") -> list[dict[str, Any]]:
        """The log of API calls (one operation's, if named), in arrival order."""
        logged = list(self.admin("GET", "requests")["requests"])
        return [r for r in logged if not operation or r["operation"] == operation]

    def calls(self, operation: str, image_set_id: str) -> list[dict[str, Any]]:
        """Every `operation` call the emulator received for one image set, in order."""
        return [r for r in self.requests(operation) if r["imageSetId"] == image_set_id]

    def update_calls(self, image_set_id: str) -> list[dict[str, Any]]:
        return self.calls("UpdateImageSetMetadata", image_set_id)

    def clear_requests(self) -> None:
        self.admin("DELETE", "requests")

    def set_faults(self, knobs: Mapping[str, object]) -> None:
        """Replace every fault knob (left-out knobs return to 'no fault')."""
        self.admin("PUT", "faults", dict(knobs))

    def clear_faults(self) -> None:
        self.set_faults({})

    def release_stalled(self) -> int:
        """Let every update stalled by the `update_stall_rate` fault finish; how many there were."""
        return int(self.admin("POST", "release-stalled", {})["released"])
