"""The Dockerfile without an engine: both wheels (client and server) built from its COPY set alone,
then its ENTRYPOINT and CMD run as its USER, in its WORKDIR, on a tree that user cannot write."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from devstack.processes import free_port, wait_until
from devstack.servers import EMULATOR_AWS_ENV
from devstack.settings import write_toml
from tests.deploy.image import DOCKERFILE, Image, copy_set
from tests.deploy.pod import grpc_health

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "/etc/imaging-proxy/imaging-proxy.toml"
"""Where CMD reads its settings (compose mounts deploy/imaging-proxy.toml there)."""


def as_user(image: Image) -> list[str]:
    if os.geteuid() != 0:
        return []
    uid, gid = image.user
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def test_the_build_context_is_the_copy_set_and_the_wheels_generated_the_stubs(image: Image) -> None:
    copied = {source.rstrip("/") for source, _ in copy_set(DOCKERFILE.read_text())}
    assert image.copied == copied
    assert not (image.context / "client" / "imaging_proxy_client" / "stubs").exists(), (
        "the checkout's stubs are never sent: the client's wheel generates its own"
    )
    site = next((image.venv / "lib").glob("python3*/site-packages"))
    stubs = site / "imaging_proxy_client" / "stubs" / "imaging" / "metadata" / "v1"
    assert (stubs / "metadata_pb2.py").is_file()
    assert (site / "devstack" / "policies" / "data.json").is_file()
    version, usage = (
        subprocess.run(
            [image.program("imaging-proxy"), option],
            capture_output=True,
            text=True,
            env=image.env,
            timeout=60,
        )
        for option in ("--version", "--help")
    )
    assert version.returncode == usage.returncode == 0, version.stderr + usage.stderr
    products = {part.split("/")[0] for part in version.stdout.split()}
    assert {"imaging-proxy-client", "imaging-proxy"} <= products, "both distributions"
    assert "not loaded" not in usage.stderr, "every verb's entry point loads"
    assert {"serve", "demo", "emulator"} <= set(re.findall(r"^    (\S+)", usage.stdout, re.M))


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the image's user needs root")
def test_the_image_user_cannot_write_the_installed_tree(image: Image) -> None:
    probe = "import pathlib, sys; pathlib.Path(sys.argv[1], 'written').write_text('x')"
    argv = [*as_user(image), image.program("python"), "-c", probe, str(image.venv)]
    result = subprocess.run(argv, capture_output=True, text=True, env=image.env, timeout=60)
    assert result.returncode != 0 and "PermissionError" in result.stderr


def test_entrypoint_and_cmd_serve_as_the_image_user(image: Image, shared_tmp: Path) -> None:
    """CMD's config is deploy/imaging-proxy.toml (compose's mount) with a laptop's changes:
    loopback, free ports, the example PKI, no Redis, an OPA that need not answer."""
    certs = shared_tmp / "etc" / "imaging-proxy" / "tls"
    subprocess.run(
        ["bash", str(ROOT / "deploy" / "tls" / "make-certs.sh"), str(certs)],
        check=True,
        capture_output=True,
    )
    if os.geteuid() == 0:
        for key in certs.glob("*.key"):
            os.chown(key, 0, image.user[1])
            os.chmod(key, 0o440)
    settings = tomllib.loads((ROOT / "deploy" / "imaging-proxy.toml").read_text())
    health = free_port()
    settings["server"].update(
        host="127.0.0.1", port=free_port(), health_port=health, metrics_port=free_port()
    )
    for key, value in settings["identity"].items():
        settings["identity"][key] = str(shared_tmp / value.lstrip("/"))
    settings["opa"]["url"] = f"http://127.0.0.1:{free_port()}"
    del settings["journal"]
    write_toml(shared_tmp / CONFIG.lstrip("/"), settings)
    workdir = shared_tmp / image.workdir.lstrip("/")
    workdir.mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(workdir, *image.user)
    cmd = [part.replace(CONFIG, str(shared_tmp / CONFIG.lstrip("/"))) for part in image.cmd]
    argv = [*as_user(image), image.program(image.entrypoint[0]), *image.entrypoint[1:], *cmd]
    log = shared_tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**image.env, **EMULATOR_AWS_ENV},
        )
    try:
        from devstack.processes import Child

        wait_until(lambda: grpc_health(health, "liveness"), Child("serve", process, log), 60)
        status = Path(f"/proc/{process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if os.geteuid() == 0:
            assert uid_line.split()[1:] == [str(image.user[0])] * 4
        assert not grpc_health(health, "readiness"), "OPA is nowhere: not ready"
    finally:
        process.terminate()
        process.wait(30)
