"""The wire format: routes, error classes and every response, checked against botocore's model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from emulator import exceptions
from emulator.responses import HANDLERS
from emulator.spec import service_model
from emulator.urls import api_routes
from tests.emulator.conftest import (
    DEMO_DATASTORE,
    IMPORT_URI,
    Emulator,
    blob,
    eventually,
    settled,
)
from tests.emulator.shapes import problems_in_body

ROLE = "arn:aws:iam::123456789012:role/ImportRole"


def test_routes_are_the_models_request_uris() -> None:
    model = service_model()
    routes = {r.operation: r for r in api_routes()}
    assert set(routes) == set(model.operation_names)
    get_image_set = routes["GetImageSet"]
    assert (get_image_set.method, get_image_set.path) == (
        "POST",
        "/datastore/{datastoreId}/imageSet/{imageSetId}/getImageSet",
    )
    assert routes["ListTagsForResource"].path == "/tags/{resourceArn:.+}"


def test_every_operation_but_image_frames_is_served() -> None:
    assert set(service_model().operation_names) - set(HANDLERS) == {"GetImageFrame"}


@pytest.mark.parametrize(
    "cls",
    [
        c
        for c in vars(exceptions).values()
        if isinstance(c, type) and c.__bases__ == (exceptions.EmulatorError,)
    ],
)
def test_error_classes_carry_the_models_status(cls: type[exceptions.EmulatorError]) -> None:
    shape = service_model().shape_for(cls.__name__)
    assert shape.metadata["exception"] is True
    assert cls.status == shape.metadata["error"]["httpStatusCode"]
    assert cls.code == cls.__name__


def _capture_bodies(client: Any) -> list[tuple[str, bytes]]:
    """Records every raw response body the client parses (registered on before-parse)."""
    bodies: list[tuple[str, bytes]] = []

    def record(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
        if response_dict["status_code"] < 300 and isinstance(response_dict["body"], bytes):
            bodies.append((operation_model.name, response_dict["body"]))

    client.meta.events.register("before-parse.medical-imaging.*", record)
    return bodies


def _exercise_every_operation(
    client: Any, emulator: Emulator, image_set_id: str, folder: Path
) -> set[str]:
    """One call of each operation through a boto3 client; returns the operations answered 200."""
    ds = DEMO_DATASTORE
    client.get_datastore(datastoreId=ds)
    client.list_datastores(maxResults=1)
    client.get_image_set(datastoreId=ds, imageSetId=image_set_id)
    client.get_image_set_metadata(datastoreId=ds, imageSetId=image_set_id)[
        "imageSetMetadataBlob"
    ].read()
    update = {
        "DICOMUpdates": {
            "updatableAttributes": blob(
                {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "X"}}}
            )
        }
    }
    client.update_image_set_metadata(
        datastoreId=ds,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates=update,
        force=True,
    )
    settled(client, ds, image_set_id)
    client.list_image_set_versions(datastoreId=ds, imageSetId=image_set_id)
    client.search_image_sets(
        datastoreId=ds,
        searchCriteria={
            "filters": [
                {
                    "values": [{"updatedAt": 0}, {"updatedAt": time.time() + 60}],
                    "operator": "BETWEEN",
                }
            ],
            "sort": {"sortField": "createdAt", "sortOrder": "ASC"},
        },
    )
    copy = client.copy_image_set(
        datastoreId=ds,
        sourceImageSetId=image_set_id,
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": "2"}},
    )
    copy_id = copy["destinationImageSetProperties"]["imageSetId"]
    settled(client, ds, copy_id)
    client.delete_image_set(datastoreId=ds, imageSetId=copy_id)
    arn = client.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreArn"]
    client.tag_resource(resourceArn=arn, tags={"team": "imaging"})
    client.untag_resource(resourceArn=arn, tagKeys=["team"])
    client.list_tags_for_resource(resourceArn=arn)
    job = client.start_dicom_import_job(
        datastoreId=ds,
        dataAccessRoleArn=ROLE,
        inputS3Uri=IMPORT_URI,
        outputS3Uri="s3://bucket/out/",
    )
    eventually(
        lambda: (
            client.get_dicom_import_job(datastoreId=ds, jobId=job["jobId"])["jobProperties"][
                "jobStatus"
            ]
            == "COMPLETED"
        )
    )
    client.list_dicom_import_jobs(datastoreId=ds)
    created = client.create_datastore(datastoreName="scratch", tags={"a": "b"})
    eventually(
        lambda: (
            client.get_datastore(datastoreId=created["datastoreId"])["datastoreProperties"][
                "datastoreStatus"
            ]
            == "ACTIVE"
        )
    )
    client.delete_datastore(datastoreId=created["datastoreId"])
    return {r["operation"] for r in emulator.requests() if r["status"] == 200}


def test_every_response_conforms_to_the_model_with_boto3(
    client: Any, emulator: Emulator, seeded: list[str], tmp_path: Path
) -> None:
    bodies = _capture_bodies(client)
    answered = _exercise_every_operation(client, emulator, seeded[0], tmp_path)
    assert answered == set(HANDLERS)
    model = service_model()
    for name, body in bodies:
        assert problems_in_body(model.operation_model(name), body) == [], name


async def test_responses_parse_with_aioboto3(aio_client: Any, seeded: list[str]) -> None:
    ds, image_set_id = DEMO_DATASTORE, seeded[1]
    bodies = _capture_bodies(aio_client)
    got = await aio_client.get_image_set(datastoreId=ds, imageSetId=image_set_id, versionId="1")
    assert (got["versionId"], got["imageSetState"], got["isPrimary"]) == ("1", "ACTIVE", False)
    response = await aio_client.get_image_set_metadata(datastoreId=ds, imageSetId=image_set_id)
    async with response["imageSetMetadataBlob"] as stream:
        raw = await stream.read()
    assert raw[:2] == b"\x1f\x8b", "aiobotocore must see the gzip bytes HealthImaging sends"
    updated = await aio_client.update_image_set_metadata(
        datastoreId=ds,
        imageSetId=image_set_id,
        latestVersionId="1",
        includeStudyImageSets=False,
        updateImageSetMetadataUpdates={
            "DICOMUpdates": {
                "updatableAttributes": b'{"Patient": {"DICOM": {"PatientName": "A^B"}}}'
            }
        },
    )
    assert (
        updated["latestVersionId"],
        updated["imageSetState"],
        updated["imageSetWorkflowStatus"],
    ) == ("2", "LOCKED", "UPDATING")
    versions = await aio_client.list_image_set_versions(datastoreId=ds, imageSetId=image_set_id)
    assert [v["versionId"] for v in versions["imageSetPropertiesList"]] == ["2", "1"]
    found = await aio_client.search_image_sets(
        datastoreId=ds,
        searchCriteria={"filters": [{"values": [{"DICOMPatientId": "4MR1"}], "operator": "EQUAL"}]},
    )
    assert [s["imageSetId"] for s in found["imageSetsMetadataSummaries"]] == [image_set_id]
    model = service_model()
    for name, body in bodies:
        assert problems_in_body(model.operation_model(name), body) == [], name


ERROR_CASES = [
    (
        "ValidationException",
        400,
        lambda c, ids: c.get_image_set(datastoreId=DEMO_DATASTORE, imageSetId="NOT-AN-ID"),
    ),
    (
        "ResourceNotFoundException",
        404,
        lambda c, ids: c.get_image_set(datastoreId=DEMO_DATASTORE, imageSetId="0" * 32),
    ),
    (
        "ResourceNotFoundException",
        404,
        lambda c, ids: c.get_image_set(
            datastoreId=DEMO_DATASTORE, imageSetId=ids[0], versionId="9"
        ),
    ),
    (
        "ConflictException",
        409,
        lambda c, ids: c.update_image_set_metadata(
            datastoreId=DEMO_DATASTORE,
            imageSetId=ids[0],
            latestVersionId="7",
            updateImageSetMetadataUpdates={"revertToVersionId": "1"},
        ),
    ),
    ("ConflictException", 409, lambda c, ids: c.delete_datastore(datastoreId=DEMO_DATASTORE)),
]


@pytest.mark.parametrize(("code", "status", "call"), ERROR_CASES)
def test_errors_raise_the_same_class_as_aws(
    client: Any, seeded: list[str], code: str, status: int, call: Any
) -> None:
    with pytest.raises(getattr(client.exceptions, code)) as raised:
        call(client, seeded)
    error = raised.value.response
    assert error["Error"]["Code"] == code
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error["Error"]["Message"]


def test_error_body_and_header_on_the_wire(emulator: Emulator, seeded: list[str]) -> None:
    import urllib.error
    import urllib.request

    url = f"{emulator.url}/datastore/{DEMO_DATASTORE}/imageSet/{'0' * 32}/getImageSet"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5)
    assert raised.value.code == 404
    assert raised.value.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    assert set(json.loads(raised.value.read())) == {"message"}


def test_both_union_members_are_a_validation_error(emulator: Emulator, seeded: list[str]) -> None:
    """botocore refuses this client side; a raw HTTP client reaches the service's own check."""
    import urllib.error
    import urllib.request

    image_set = f"{emulator.url}/datastore/{DEMO_DATASTORE}/imageSet/{seeded[0]}"
    url = f"{image_set}/updateImageSetMetadata?latestVersion=1"
    body = {"DICOMUpdates": {"updatableAttributes": "e30="}, "revertToVersionId": "1"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert (raised.value.code, raised.value.headers["x-amzn-ErrorType"]) == (
        400,
        "ValidationException",
    )


def test_unknown_data_store_is_a_client_error(client: Any, seeded: list[str]) -> None:
    with pytest.raises(ClientError) as raised:
        client.get_datastore(datastoreId="0" * 32)
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
