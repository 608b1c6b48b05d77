"""The client room (`service/cli/client/`) loads only itself, the client library and the stubs."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import service.cli.client

ALLOWED_PREFIXES = ("service._proto", "service.cli.client", "service.client")
ENCLOSING_PACKAGES = {"service", "service.cli"}


def test_the_client_imports_none_of_the_server_modules() -> None:
    modules = [
        f"service.cli.client.{info.name}"
        for info in pkgutil.iter_modules(service.cli.client.__path__)
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
    assert "service.cli.client.connection" in loaded
    strays = {m for m in loaded - ENCLOSING_PACKAGES if not m.startswith(ALLOWED_PREFIXES)}
    assert strays == set()
