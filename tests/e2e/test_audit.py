"""The audit trail of real proxies (real OPA, emulator, gRPC): a file of its own, one record per
decision (allowed, denied, unavailable), submit and finish, each valid against the published
docs/audit.schema.json; as FHIR AuditEvent, valid for fhir.resources; never an attribute value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import jsonschema
import pytest
from fhir.resources.auditevent import AuditEvent
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.polling import eventually
from devstack.processes import free_port
from devstack.proxies import ProxyProcess
from devstack.servers import start_opa
from devstack.stack import LocalStack, StackSpec, running_stack
from tests.e2e.conftest import collect, dev, kinds, study_update

pytestmark = pytest.mark.e2e

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "audit.schema.json").read_text())
MARKER = "AUDITMARKER-K4W"
"""In every attribute value sent: it must never reach an audit record."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(StackSpec(3, aws_examples=False), tmp_path_factory.mktemp("audit")) as s:
        yield s


def patient_name_update(stack: LocalStack, image_set_id: str) -> pb.UpdateImageSetMetadataRequest:
    """PatientName: demo-editor holds no patient-identity role, so the policy denies it."""
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": MARKER}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=stack.datastore_id,
        image_set_id=image_set_id,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
    )


async def traffic(proxy: ProxyProcess, stack: LocalStack, image_set: str) -> None:
    """An allowed update to its end, an evaluation, a policy denial, a no-role denial and a
    caller without identity."""
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        update = study_update(stack.datastore_id, image_set, MARKER)
        events = await collect(stub.UpdateImageSetMetadata(update, metadata=dev("demo-editor")))
        assert kinds(events)[-1] == "finished"
        await stub.EvaluateUpdate(update, metadata=dev("demo-editor"))
        for request, who in (
            (patient_name_update(stack, image_set), dev("demo-editor")),
            (update, dev("nobody-at-all")),
            (update, ()),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await collect(stub.UpdateImageSetMetadata(request, metadata=who))


async def records_of(proxy: ProxyProcess, count: int) -> list[str]:
    async def written() -> None:
        assert len(proxy.audit_path.read_text().splitlines()) >= count

    await eventually(written, within=10)
    return proxy.audit_path.read_text().splitlines()


async def test_every_record_is_valid_against_the_published_schema(
    stack: LocalStack, tmp_path: Path
) -> None:
    proxy = stack.add_proxy(tmp_path, name="audited")
    image_set = stack.take()[0]
    await traffic(proxy, stack, image_set)
    lines = await records_of(proxy, 7)
    records = [json.loads(line) for line in lines]
    for record in records:
        jsonschema.validate(record, SCHEMA, format_checker=jsonschema.FormatChecker())
    seen = [(r["event"], r["outcome"], r.get("rpc", "")) for r in records]
    assert seen == [
        ("decision", "allowed", "UpdateImageSetMetadata"),
        ("submit", "submitted", ""),
        ("finish", "UPDATED", ""),
        ("decision", "allowed", "EvaluateUpdate"),
        ("decision", "denied", "UpdateImageSetMetadata"),
        ("decision", "denied", "UpdateImageSetMetadata"),  # no role: before the document is read
        ("refusal", "UNAUTHENTICATED", "UpdateImageSetMetadata"),
    ]
    allowed, submit, finish = records[:3]
    assert allowed["decision_id"] == submit["decision_id"] == finish["decision_id"]
    assert submit["operation_id"] == finish["operation_id"]
    assert finish["tags"] == ["study:00081030"] and finish["image_set_id"] == image_set
    assert {r["decision_id_source"] for r in records[:6]} == {"opa"}  # OPA logs decisions here
    assert records[6]["decision_id_source"] == "proxy"  # no decision for an unknown caller
    assert MARKER not in "\n".join(lines)
    logged = proxy.log_path.read_text()
    assert '"decision_id_source"' not in logged  # the trail is apart from the logs


async def test_a_refusal_because_opa_is_down_is_audited(stack: LocalStack, tmp_path: Path) -> None:
    dead_opa, metrics_port = f"http://127.0.0.1:{free_port()}", free_port()
    args = ["--opa-url", dead_opa, "--metrics-port", str(metrics_port)]
    proxy = stack.add_proxy(tmp_path, args, name="no-opa", metrics_port=metrics_port)
    image_set = stack.take()[0]
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        update = study_update(stack.datastore_id, image_set, MARKER)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(stub.UpdateImageSetMetadata(update, metadata=dev("demo-editor")))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    [line] = await records_of(proxy, 1)
    record = json.loads(line)
    jsonschema.validate(record, SCHEMA)
    assert (record["event"], record["outcome"]) == ("decision", "unavailable")
    assert record["reasons"] == ["policy decision unavailable: unreachable"]
    assert record["decision_id_source"] == "proxy" and record["image_set_id"] == image_set
    counted = 'imaging_proxy_decisions_total{outcome="unavailable",reason="unreachable"} 1.0'
    assert counted in proxy.metrics()


async def test_fhir_audit_events_name_the_principal_and_the_image_set_without_phi(
    stack: LocalStack, tmp_path: Path
) -> None:
    """[audit] format = "fhir", against an OPA without decision logs: the proxy makes the ids."""
    port = free_port()
    stack.children.append(start_opa(tmp_path, port, decision_log=False))  # stopped with it
    settings = {"audit": {"format": "fhir"}}
    proxy = stack.add_proxy(
        tmp_path, ["--opa-url", f"http://127.0.0.1:{port}"], settings, name="fhir"
    )
    image_set = stack.take()[0]
    await traffic(proxy, stack, image_set)
    lines = await records_of(proxy, 7)
    events = [AuditEvent.model_validate_json(line) for line in lines]
    assert MARKER not in "\n".join(lines)
    update = events[0]
    assert update.agent[0].who.identifier.value == "dev:demo-editor"
    assert update.entity[0].what.identifier.value == f"{stack.datastore_id}/{image_set}"
    assert [e.outcome.code.code for e in events] == ["0", "0", "0", "0", "4", "4", "4"]
    details = {d.type.text: d.valueString for d in update.entity[0].detail}
    assert details["decision_id_source"] == "proxy"
    assert update.agent[0].policy == [f"urn:uuid:{details['decision_id']}"]
    assert events[-1].category[0].coding[0].code == "110114"  # unidentified: authentication
