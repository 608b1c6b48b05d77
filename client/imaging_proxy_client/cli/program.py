"""How to run this `imaging-proxy` again, as a command a user can paste (the demo's banner and
the CLI's re-attach hint print it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def program() -> list[str]:
    """`imaging-proxy` when PATH finds this very script; else its path (`.venv/bin/imaging-proxy`
    under `make run`), or this interpreter with `-m imaging_proxy_client.cli.main`."""
    script = Path(sys.argv[0])
    if script.name != "imaging-proxy":
        return [sys.executable, "-m", "imaging_proxy_client.cli.main"]
    on_path = shutil.which("imaging-proxy")
    if on_path and Path(on_path).resolve() == script.resolve():
        return ["imaging-proxy"]
    return [str(script)]
