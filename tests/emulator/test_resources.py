"""Data stores, search, pagination, copies into an existing image set and DICOM import jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devstack.examples import EXAMPLE_SERIES
from tests.emulator.conftest import (
    DEMO_DATASTORE,
    EXAMPLE_STUDY,
    IMPORT_URI,
    Emulator,
    eventually,
    metadata,
    sample,
    settled,
)

DS = DEMO_DATASTORE
ROLE = "arn:aws:iam::123456789012:role/ImportRole"


def search(client: Any, attribute: str, *values: Any) -> list[str]:
    operator = "EQUAL" if len(values) == 1 else "BETWEEN"
    criteria = {"filters": [{"values": [{attribute: v} for v in values], "operator": operator}]}
    found = client.search_image_sets(datastoreId=DS, searchCriteria=criteria)
    return [s["imageSetId"] for s in found["imageSetsMetadataSummaries"]]


def test_search_filters(client: Any, seeded: list[str]) -> None:
    ct, mr = seeded
    assert search(client, "DICOMPatientId", "1CT1") == [ct]
    assert search(
        client, "DICOMStudyInstanceUID", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    ) == [ct]
    assert search(client, "DICOMAccessionNumber", "nothing") == []
    assert sorted(search(client, "updatedAt", 0, time.time() + 60)) == sorted(seeded)
    assert search(client, "updatedAt", 0, 1) == []
    assert search(
        client, "DICOMSeriesInstanceUID", "1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457"
    ) == [mr]
    with pytest.raises(client.exceptions.ValidationException):
        search(client, "DICOMPatientId", "a", "b")  # BETWEEN is for ranges


def test_search_summary_and_sort(client: Any, seeded: list[str]) -> None:
    criteria = {"sort": {"sortField": "createdAt", "sortOrder": "ASC"}}
    found = client.search_image_sets(datastoreId=DS, searchCriteria=criteria)
    summaries = found["imageSetsMetadataSummaries"]
    assert [s["imageSetId"] for s in summaries] == seeded
    tags = summaries[0]["DICOMTags"]
    assert (
        tags["DICOMPatientId"],
        tags["DICOMNumberOfStudyRelatedInstances"],
        tags["DICOMSeriesNumber"],
    ) == (
        "1CT1",
        1,
        1,
    )
    assert found["sort"] == criteria["sort"]


def test_paginators(client: Any, emulator: Emulator, seeded: list[str]) -> None:
    for index in range(3):
        client.create_datastore(datastoreName=f"page-{index}")
    pages = client.get_paginator("list_datastores").paginate(PaginationConfig={"PageSize": 2})
    assert sum(len(p["datastoreSummaries"]) for p in pages) == 4
    found = client.get_paginator("search_image_sets").paginate(
        datastoreId=DS, PaginationConfig={"PageSize": 1}
    )
    assert sorted(
        s["imageSetId"] for p in found for s in p["imageSetsMetadataSummaries"]
    ) == sorted(seeded)
    with pytest.raises(client.exceptions.ValidationException):
        client.list_datastores(nextToken="bm90IGEgdG9rZW4=")


def test_datastore_lifecycle(client: Any, seeded: list[str]) -> None:
    created = client.create_datastore(datastoreName="scratch", clientToken="same-token")
    assert created["datastoreStatus"] == "CREATING"
    again = client.create_datastore(datastoreName="scratch", clientToken="same-token")
    assert again["datastoreId"] == created["datastoreId"]
    new_id = created["datastoreId"]
    eventually(
        lambda: (
            client.get_datastore(datastoreId=new_id)["datastoreProperties"]["datastoreStatus"]
            == "ACTIVE"
        )
    )
    assert client.delete_datastore(datastoreId=new_id)["datastoreStatus"] == "DELETING"
    with pytest.raises(client.exceptions.ConflictException):
        client.delete_datastore(datastoreId=DS)  # it still holds image sets


def test_copy_into_an_existing_image_set(
    client: Any, emulator: Emulator, example_dicom: Path
) -> None:
    first, second = (example_dicom / "instance0.dcm", example_dicom / "instance2.dcm")
    source = emulator.reset_and_seed([first])[0]
    target = emulator.admin(
        "POST", "seed", {"paths": [str(second)], "datastoreId": DS, "isPrimary": False}
    )
    target_id = target["imageSetIds"][0]
    info = {
        "sourceImageSet": {"latestVersionId": "1"},
        "destinationImageSet": {"imageSetId": target_id, "latestVersionId": "1"},
    }
    copied = client.copy_image_set(
        datastoreId=DS, sourceImageSetId=source, copyImageSetInformation=info
    )
    assert copied["destinationImageSetProperties"]["latestVersionId"] == "2"
    assert settled(client, DS, target_id)["imageSetWorkflowStatus"] == "COPIED"
    assert EXAMPLE_SERIES in metadata(client, DS, target_id)["Study"]["Series"]
    other_study = emulator.admin(
        "POST",
        "seed",
        {"paths": [str(sample("MR_small.dcm"))], "datastoreId": DS, "isPrimary": False},
    )["imageSetIds"][0]
    info["destinationImageSet"] = {"imageSetId": other_study, "latestVersionId": "1"}
    client.copy_image_set(datastoreId=DS, sourceImageSetId=source, copyImageSetInformation=info)
    failed = settled(client, DS, other_study)
    assert failed["imageSetWorkflowStatus"] == "COPY_FAILED" and "Series" in failed["message"]
    assert metadata(client, DS, target_id)["Study"]["DICOM"]["StudyInstanceUID"] == EXAMPLE_STUDY


def test_import_job_creates_primary_image_sets(client: Any, seeded: list[str]) -> None:
    job = client.start_dicom_import_job(
        datastoreId=DS,
        dataAccessRoleArn=ROLE,
        inputS3Uri=IMPORT_URI,
        outputS3Uri="s3://out-bucket/x/",
    )
    assert job["jobStatus"] == "SUBMITTED"

    def completed() -> dict[str, Any] | None:
        props: dict[str, Any] = client.get_dicom_import_job(datastoreId=DS, jobId=job["jobId"])[
            "jobProperties"
        ]
        return props if props["jobStatus"] == "COMPLETED" else None

    props = eventually(completed)
    assert props["inputS3Uri"] == IMPORT_URI and "endedAt" in props
    imported = [i for i in search(client, "DICOMPatientId", "4MR1") if i not in seeded]
    assert len(imported) == 1
    assert client.get_image_set(datastoreId=DS, imageSetId=imported[0])["isPrimary"] is True
    listed = client.list_dicom_import_jobs(datastoreId=DS, jobStatus="COMPLETED")["jobSummaries"]
    assert [j["jobId"] for j in listed] == [job["jobId"]]


def test_import_from_an_unmapped_bucket_fails(client: Any, seeded: list[str]) -> None:
    job = client.start_dicom_import_job(
        datastoreId=DS,
        dataAccessRoleArn=ROLE,
        inputS3Uri="s3://unknown-bucket/",
        outputS3Uri="s3://out-bucket/",
    )

    def failed() -> dict[str, Any] | None:
        props: dict[str, Any] = client.get_dicom_import_job(datastoreId=DS, jobId=job["jobId"])[
            "jobProperties"
        ]
        return props if props["jobStatus"] == "FAILED" else None

    assert "inputS3Uri" in eventually(failed)["message"]


def test_tags_on_image_sets(client: Any, seeded: list[str]) -> None:
    arn = client.get_image_set(datastoreId=DS, imageSetId=seeded[0])["imageSetArn"]
    client.tag_resource(resourceArn=arn, tags={"owner": "radiology", "tier": "gold"})
    client.untag_resource(resourceArn=arn, tagKeys=["tier"])
    assert client.list_tags_for_resource(resourceArn=arn)["tags"] == {"owner": "radiology"}
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.list_tags_for_resource(resourceArn=arn.replace(seeded[0], "0" * 32))
