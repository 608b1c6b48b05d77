"""The client library (`service/client/`) loads only itself and the generated stubs."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import service.client

ALLOWED_PREFIXES = ("service._proto", "service.client")


def test_the_library_imports_none_of_the_server_modules() -> None:
    modules = [
        f"service.client.{info.name}" for info in pkgutil.iter_modules(service.client.__path__)
    ]
    # A fresh interpreter: this test process has already imported the server's modules.
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('service'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "service.client._engine" in loaded
    strays = {m for m in loaded - {"service"} if not m.startswith(ALLOWED_PREFIXES)}
    assert strays == set()
