"""The README's four-eyes flow, run as printed against the demo stack: demo-patient's PatientID
change waits, demo-admin lists and approves it, the first command then prints UPDATED; a
rejection exits 254 (UpdateRejected); break-glass goes ahead and is reviewed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from tests.cli.test_e2e_cli import CLI, Result, cli, target
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The shell commands of README's "Four eyes in the demo" section, continuations joined."""
    section = README.read_text().split("### Four eyes in the demo", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def as_printed(command: str, stack: Stack, **placeholders: str) -> list[str]:
    """The README's command for this stack: its endpoint, and the ids it leaves to the reader."""
    command = command.replace("127.0.0.1:50051", stack.endpoint)
    for name, value in placeholders.items():
        command = command.replace(f"<{name.replace('_', ' ')}>", value)
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/imaging-proxy"
    return [CLI, *argv[1:]]


async def run(argv: list[str]) -> Result:
    env = {k: v for k, v in os.environ.items() if k != "IMAGING_PROXY_DEV_PRINCIPAL"}
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def test_the_readme_flow_runs_as_printed(stack: Stack) -> None:
    update, listing, approve = readme_commands()
    image_set = stack.take_image_set()
    waiting = asyncio.create_task(run(as_printed(update, stack, id=image_set)))
    operation_ids: list[str] = []
    for _ in range(100):  # bounded: until the update awaits approval
        listed = await run(as_printed(listing, stack))
        assert listed.code == 0, listed.stderr
        operation_ids = listed.stdout.split()
        if operation_ids:
            break
        await asyncio.sleep(0.1)
    (operation_id,) = operation_ids
    approved = await run(as_printed(approve, stack, operation_id=operation_id))
    done = await waiting

    assert approved.code == 0, approved.stderr
    assert approved.json()["approvedBy"] == ["dev:demo-admin"]
    assert done.code == 0, done.stderr
    assert done.json()["imageSetWorkflowStatus"] == "UPDATED"
    assert "awaiting approval: 1 of role patient-identity-approver" in done.stderr


async def test_a_rejected_update_exits_254_and_break_glass_is_reviewed(stack: Stack) -> None:
    fix = json.dumps(
        {"DICOMUpdates": {"updatableAttributes": json.dumps(
            {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientID": "4MR1-GLASS"}}}
        )}}
    )  # fmt: skip
    why = ["--cli-binary-format", "raw-in-base64-out", "--justification", "chart mix-up"]
    image_set = stack.take_image_set()
    update = [*target(stack, image_set), *why, "--update-image-set-metadata-updates", fix]
    waiting = asyncio.create_task(cli(stack, *update, principal="demo-patient"))
    listing = ["list-updates", "--datastore-id", stack.datastore_id, "--image-set-id", image_set]
    for _ in range(100):
        found = (await cli(stack, *listing, "--state", "awaiting_approval")).json()["operations"]
        if found:
            break
        await asyncio.sleep(0.1)
    rejected = await cli(stack, "reject-update", "--operation-id", found[0]["operationId"])
    refused = await waiting
    glass = await cli(
        stack, *target(stack, stack.take_image_set()), *why, "--break-glass",
        "--purpose-of-use", "ETREAT", "--update-image-set-metadata-updates", fix,
        principal="demo-clinician",
    )  # fmt: skip
    to_review = await cli(
        stack, "list-updates", "--datastore-id", stack.datastore_id, "--break-glass",
        "--query", "operations[?!reviewedBy].operationId", "--output", "text",
    )  # fmt: skip
    reviewed = [
        await cli(stack, "review-update", "--operation-id", op) for op in to_review.stdout.split()
    ]

    assert rejected.code == 0 and rejected.json()["state"] == "rejected"
    assert refused.code == 254
    assert "(UpdateRejected)" in refused.stderr and "nothing was written" in refused.stderr
    assert glass.code == 0, glass.stderr
    assert glass.json()["imageSetWorkflowStatus"] == "UPDATED"
    assert reviewed and all(r.code == 0 and r.json()["reviewedBy"] for r in reviewed)
