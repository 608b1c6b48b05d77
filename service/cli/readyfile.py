"""Ready files: the JSON a process writes once it serves, and its starters poll for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    """A JSON document another process writes (raises OSError/ValueError until it is complete)."""
    return json.loads(path.read_text())


def write_json_atomically(path: Path, document: object) -> None:
    """Readers polling for `path` never see it half written."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2))
    temporary.replace(path)
