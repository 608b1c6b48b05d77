"""The client distribution (`client/imaging_proxy_client/`) loads nothing of the server's, at run
time too (import-linter checks the imports it writes; this, the ones it makes)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import imaging_proxy_client

SERVER_ROOTS = ("service", "devstack", "emulator", "medical_imaging_model")


def test_the_client_and_its_verbs_load_none_of_the_server_modules() -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(imaging_proxy_client.__path__, "imaging_proxy_client.")
        if not info.name.startswith("imaging_proxy_client.stubs")
    ]
    # A fresh interpreter: this test process has already imported the server's modules.
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert {"imaging_proxy_client.engine", "imaging_proxy_client.cli.connection"} <= loaded
    strays = {m for m in loaded if m.split(".")[0] in SERVER_ROOTS}
    assert strays == set()
