"""A hospital tests its own rules with the exact input the proxy builds (docs/POLICIES.md):
EvaluateUpdate with include_policy_input through the real demo proxy, then a Rego test written
around that input and run by the real `opa test` against the shipped policies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.servers import find_opa
from tests.e2e.conftest import Stack, dev

pytestmark = pytest.mark.e2e

POLICIES = Path(__file__).resolve().parents[2] / "policies"

HOSPITAL_TEST = """package hospital_test

import data.imaging.update

request_input := {input_json}

# What the proxy decided for this very input, as a regression case.
test_the_recorded_request_is_allowed if {{
	update.decision.allow with input as request_input
}}

# The hospital's rule: the same change by a caller without a role is refused.
test_the_same_change_by_a_viewer_is_refused if {{
	viewer := object.union(request_input, {{"caller": {{"principal": "dev:demo-viewer"}}}})
	not update.decision.allow with input as viewer
}}
"""


def study_change(stack: Stack, image_set_id: str) -> pb.UpdateImageSetMetadataRequest:
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=stack.datastore_id,
        image_set_id=image_set_id,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
        include_policy_input=True,
    )


async def test_the_policy_input_becomes_an_opa_test_case(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub, tmp_path: Path
) -> None:
    request = study_change(stack, stack.image_set_ids[0])
    evaluation = await stub.EvaluateUpdate(request, metadata=dev("demo-author"))
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stub.EvaluateUpdate(request, metadata=dev("demo-editor"))
    unasked = pb.UpdateImageSetMetadataRequest()
    unasked.CopyFrom(request)
    unasked.include_policy_input = False
    plain = await stub.EvaluateUpdate(unasked, metadata=dev("demo-editor"))

    shown = json.loads(evaluation.policy_input)
    assert evaluation.decision.allow
    assert shown["caller"]["principal"] == "dev:demo-author"
    assert [c["keyword"] for c in shown["changes"]] == ["StudyDescription"]
    assert "CHEST" not in evaluation.policy_input  # values only with [opa] send_values
    assert hidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy-author" in (hidden.value.details() or "")
    assert plain.policy_input == ""  # not asked for: not built

    case = tmp_path / "hospital_test.rego"
    case.write_text(HOSPITAL_TEST.format(input_json=evaluation.policy_input))
    opa = await asyncio.create_subprocess_exec(
        find_opa(), "test", "--verbose", str(POLICIES), str(case),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(opa.communicate(), 60))[0].decode()
    assert opa.returncode == 0, output
    assert "test_the_recorded_request_is_allowed: PASS" in output
    assert "test_the_same_change_by_a_viewer_is_refused: PASS" in output
