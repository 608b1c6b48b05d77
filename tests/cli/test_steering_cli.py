"""The operator verbs and the rough edges of issue 21, as a user meets them: the CLI as a process
against the real demo stack (list-updates, get-update, cancel-update, evaluate-update's return
codes and policy input), and against a real TLS listener built by the proxy's own
`server_credentials` (each failed handshake named, no gRPC core line on the screen)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from devstack import demo
from service.core.config import IdentitySettings
from service.transport.tls import server_credentials
from tests.cli.test_e2e_cli import CLI, Result, cli, faults, patient_name, target
from tests.e2e.conftest import Stack
from tests.support.pki import Pki, write_pki

pytestmark = pytest.mark.e2e


def study(text: str) -> str:
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": text}}}
    return json.dumps({"DICOMUpdates": {"updatableAttributes": json.dumps(document)}})


async def test_list_get_and_cancel_as_the_aws_cli_prints_them(stack: Stack) -> None:
    image_set = stack.take_image_set()
    update = [*target(stack, image_set), "--cli-binary-format", "raw-in-base64-out"]
    done = await cli(stack, *update, "--update-image-set-metadata-updates", study("LISTED"))
    assert done.code == 0, done.stderr
    other = [*target(stack, stack.take_image_set()), "--cli-binary-format", "raw-in-base64-out"]
    again = await cli(stack, *other, "--update-image-set-metadata-updates", study("LISTED"))
    assert again.code == 0, again.stderr

    listed = await cli(stack, "list-updates", "--image-set-id", image_set, principal="demo-editor")
    everyone = await cli(
        stack, "list-updates", "--image-set-id", image_set, "--query", "operations[0].state",
        "--output", "text",
    )  # fmt: skip
    [operation] = (await cli(stack, "list-updates", "--image-set-id", image_set)).json()[
        "operations"
    ]
    got = await cli(stack, "get-update", "--operation-id", operation["operationId"])
    refused = await cli(stack, "cancel-update", "--operation-id", operation["operationId"])
    stranger = await cli(
        stack, "get-update", "--operation-id", operation["operationId"], principal="demo-viewer"
    )
    paging = ["list-updates", "--datastore-id", stack.datastore_id, "--max-results", "1"]
    paged = await cli(stack, *paging, "--no-paginate")
    every_page = await cli(stack, *paging)

    assert listed.json() == {"operations": []}  # demo-editor sees its own only: none here
    assert everyone.stdout.strip() == "finished"
    assert (operation["principal"], operation["state"]) == ("dev:demo-admin", "finished")
    assert operation["lastState"]["imageSetWorkflowStatus"] == "UPDATED"
    assert got.json() == operation
    assert refused.code == 254
    assert "(FailedPrecondition) when calling the CancelUpdate operation" in refused.stderr
    assert "is finished: only a queued update can be cancelled" in refused.stderr
    assert stranger.code == 254 and "PolicyDeniedException" in stranger.stderr
    assert len(paged.json()["operations"]) == 1 and paged.json()["nextToken"]
    assert len(every_page.json()["operations"]) >= 2 and "nextToken" not in every_page.json()


async def test_evaluate_update_exit_codes_and_policy_input(stack: Stack) -> None:
    image_set = stack.take_image_set()
    args = [
        "evaluate-update", *target(stack, image_set)[1:], "--cli-binary-format",
        "raw-in-base64-out", "--update-image-set-metadata-updates", patient_name("EXIT^CODES"),
    ]  # fmt: skip
    decided_no = await cli(stack, *args, principal="demo-editor")
    no_role = await cli(stack, *args, principal="demo-viewer")
    shown = await cli(stack, *args, "--include-policy-input", principal="demo-author")
    hidden = await cli(stack, *args, "--include-policy-input", principal="demo-editor")

    assert decided_no.code == 0 and decided_no.json()["decision"]["allow"] is False
    assert no_role.code == 254 and "PolicyDeniedException" in no_role.stderr
    policy_input = shown.json()["policyInput"]
    assert policy_input["caller"]["principal"] == "dev:demo-author"
    assert [c["keyword"] for c in policy_input["changes"]] == ["PatientName"]
    assert hidden.code == 254 and "policy-author" in hidden.stderr


# --- TLS failures, named -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def listeners(pki: Pki) -> AsyncIterator[tuple[int, int, int]]:
    """(mutual-TLS port, plaintext port, mutual-TLS port whose certificate names another host):
    the proxy's listener credentials, on one server."""
    misnamed = pki.ca.issue_server("misnamed", ("proxy.example",))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    ports = []
    for files in (pki.server, None, misnamed):
        if files is None:
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            continue
        identity = IdentitySettings(
            tls_cert=str(files.cert), tls_key=str(files.key), client_ca=str(pki.ca.cert_path)
        )
        credentials = server_credentials(identity)
        assert credentials is not None
        ports.append(server.add_secure_port("127.0.0.1:0", credentials))
    await server.start()
    yield ports[0], ports[1], ports[2]
    await server.stop(None)


QUIET_UNSET = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
"""The user's environment, without a gRPC verbosity: the CLI chooses."""


async def watch(*options: str) -> Result:
    process = await asyncio.create_subprocess_exec(
        CLI, "watch-update", "--operation-id", "x", *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**QUIET_UNSET, "IMAGING_PROXY_MAX_ATTEMPTS": "2"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def test_each_tls_failure_is_named_without_grpc_core_lines(
    pki: Pki, listeners: tuple[int, int, int]
) -> None:
    tls, plain, misnamed = (f"127.0.0.1:{port}" for port in listeners)
    client = ["--client-cert", str(pki.cn_client.cert), "--client-key", str(pki.cn_client.key)]
    foreign = ["--client-cert", str(pki.foreign_client.cert)]
    foreign += ["--client-key", str(pki.foreign_client.key)]
    trusted = ["--ca-bundle", str(pki.ca.cert_path)]

    cases = {
        "client certificate required": await watch("--endpoint-url", f"https://{tls}", *trusted),
        "unknown CA": await watch(
            "--endpoint-url", f"https://{tls}", "--ca-bundle", str(pki.foreign_ca.cert_path),
            *client,
        ),
        "wrong server name": await watch(
            "--endpoint-url", f"https://{misnamed}", *trusted,
            *client,
        ),
        "probably requires TLS": await watch("--endpoint-url", f"http://{tls}"),
        "does not speak TLS on this port": await watch(
            "--endpoint-url", f"https://{plain}", *trusted, *client
        ),
        "did not accept the client certificate": await watch(
            "--endpoint-url", f"https://{tls}", *trusted, *foreign
        ),
    }  # fmt: skip
    for words, result in cases.items():
        assert result.code == 255, (words, result.stderr)
        assert words in result.stderr, (words, result.stderr)
        assert "Could not connect" not in result.stderr
        assert ".cc:" not in result.stderr and "E1" not in result.stderr  # no gRPC core lines
    works = await watch("--endpoint-url", f"https://{tls}", *trusted, *client)
    assert "UNIMPLEMENTED" in works.stderr or "Unimplemented" in works.stderr  # it connected


async def test_the_banner_update_command_runs_as_printed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `make run` starts it: `.venv/bin/imaging-proxy demo`, not on PATH."""
    monkeypatch.setattr(sys, "argv", [CLI, "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    image_set = stack.take_image_set()
    ready = {
        "endpoint": stack.endpoint, "opaUrl": stack.opa_url, "emulatorUrl": stack.emulator_url,
        "datastoreId": stack.datastore_id, "imageSetIds": [image_set],
        "exampleImageSetIds": [], "policies": "policies", "logDir": str(stack.log_dir),
    }  # fmt: skip
    banner = demo._banner(ready)
    command = banner.split("demo-viewer nothing):\n")[1].split("\n\n")[0]
    assert command.lstrip().startswith(shlex.quote(CLI) + " update-image-set-metadata")
    shell = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**QUIET_UNSET, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    assert shell.returncode == 0, err.decode()
    assert json.loads(out)["imageSetWorkflowStatus"] == "UPDATED"


async def test_cancel_update_takes_back_a_queued_update_the_cli_is_following(
    stack: Stack,
) -> None:
    """The demo's single proxy (SQLite journal): the follower ends 254 UpdateCancelled."""
    image_set = stack.take_image_set()
    update = [*target(stack, image_set), "--cli-binary-format", "raw-in-base64-out"]
    with faults(stack, update_stall_rate=1.0):
        first = await cli(
            stack, *update, "--update-image-set-metadata-updates", study("FIRST"), "--no-wait"
        )
        assert first.code == 0, first.stderr
        second_args = [*target(stack, image_set, "2"), "--cli-binary-format", "raw-in-base64-out"]
        follower = await asyncio.create_subprocess_exec(
            CLI, *second_args, "--update-image-set-metadata-updates", study("SECOND"),
            "--endpoint-url", f"http://{stack.endpoint}", "--dev-principal", "demo-editor",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=QUIET_UNSET,
        )  # fmt: skip
        assert follower.stderr is not None
        seen = b""
        while b"queued:" not in seen:
            try:
                line = await asyncio.wait_for(follower.stderr.readline(), 30)
            except TimeoutError:
                raise AssertionError(seen) from None
            assert line, seen
            seen += line
        waiting = await cli(
            stack, "list-updates", "--datastore-id", stack.datastore_id, "--image-set-id",
            image_set, "--state", "queued", "--query", "operations[0].operationId",
            "--output", "text",
        )  # fmt: skip
        assert waiting.code == 0 and waiting.stdout.strip() != "None", waiting
        cancelled = await cli(stack, "cancel-update", "--operation-id", waiting.stdout.strip())
        out, err = await asyncio.wait_for(follower.communicate(), 30)
    assert cancelled.code == 0, cancelled.stderr
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["cancelledBy"] == "dev:demo-admin"
    assert follower.returncode == 254 and out == b""
    assert "An error occurred (UpdateCancelled)" in (seen + err).decode()
    assert len(stack.update_calls(image_set)) == 1  # the first only
