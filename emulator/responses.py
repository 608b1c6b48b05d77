"""Thin handlers: take the parsed parameters, call the backend, shape the model's output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator import imports, lifecycle, search
from emulator.models import Backend
from emulator.resources import Datastore, ImageSet, ImportJob, Version
from emulator.updates import MetadataUpdate

Params = dict[str, Any]
Result = dict[str, Any]
Handler = Callable[[Backend, Params], Result]


# ---------------------------------------------------------------- data stores


def create_datastore(backend: Backend, p: Params) -> Result:
    datastore = backend.create_datastore(
        p.get("datastoreName"),
        p["clientToken"],
        kms_key_arn=p.get("kmsKeyArn"),
        lambda_authorizer_arn=p.get("lambdaAuthorizerArn"),
        lossless_storage_format=p.get("losslessStorageFormat"),
        tags=p.get("tags"),
    )
    return {"datastoreId": datastore.datastore_id, "datastoreStatus": datastore.status}


def get_datastore(backend: Backend, p: Params) -> Result:
    return {"datastoreProperties": _datastore(backend.get_datastore(p["datastoreId"]))}


def list_datastores(backend: Backend, p: Params) -> Result:
    found, token = backend.list_datastores(
        p.get("datastoreStatus"), p.get("maxResults"), p.get("nextToken")
    )
    return {"datastoreSummaries": [_datastore_summary(d) for d in found], "nextToken": token}


def delete_datastore(backend: Backend, p: Params) -> Result:
    datastore = backend.delete_datastore(p["datastoreId"])
    return {"datastoreId": datastore.datastore_id, "datastoreStatus": datastore.status}


def _datastore_summary(d: Datastore) -> Result:
    return {
        "datastoreId": d.datastore_id,
        "datastoreName": d.name,
        "datastoreStatus": d.status,
        "datastoreArn": d.arn,
        "createdAt": d.created_at,
        "updatedAt": d.updated_at,
    }


def _datastore(d: Datastore) -> Result:
    return {
        **_datastore_summary(d),
        "kmsKeyArn": d.kms_key_arn,
        "lambdaAuthorizerArn": d.lambda_authorizer_arn,
        "losslessStorageFormat": d.lossless_storage_format,
    }


# ---------------------------------------------------------------- image sets


def get_image_set(backend: Backend, p: Params) -> Result:
    image_set, version = backend.get_image_set(
        p["datastoreId"], p["imageSetId"], p.get("versionId")
    )
    return {
        "datastoreId": image_set.datastore_id,
        "imageSetId": image_set.image_set_id,
        "versionId": str(version.version_id),
        "imageSetState": version.state,
        "imageSetWorkflowStatus": version.status,
        "createdAt": image_set.created_at,
        "updatedAt": version.updated_at,
        "deletedAt": version.deleted_at,
        "message": version.message,
        "imageSetArn": image_set.arn,
        "overrides": {"forced": True} if version.forced else None,
        "isPrimary": image_set.is_primary,
        "lastAccessedAt": image_set.last_accessed_at,
        "storageTier": "FREQUENT_ACCESS",
    }


def get_image_set_metadata(backend: Backend, p: Params) -> Result:
    blob = backend.get_image_set_metadata(p["datastoreId"], p["imageSetId"], p.get("versionId"))
    return {
        "imageSetMetadataBlob": blob,
        "contentType": "application/json",
        "contentEncoding": "gzip",
    }


def list_image_set_versions(backend: Backend, p: Params) -> Result:
    versions, image_set, token = backend.list_image_set_versions(
        p["datastoreId"], p["imageSetId"], p.get("maxResults"), p.get("nextToken")
    )
    return {
        "imageSetPropertiesList": [_version(image_set, v) for v in versions],
        "nextToken": token,
    }


def _version(image_set: ImageSet, v: Version) -> Result:
    # The model spells this one `ImageSetWorkflowStatus` (capital I), unlike GetImageSet.
    return {
        "imageSetId": image_set.image_set_id,
        "versionId": str(v.version_id),
        "imageSetState": v.state,
        "ImageSetWorkflowStatus": v.status,
        "createdAt": v.created_at,
        "updatedAt": v.updated_at,
        "deletedAt": v.deleted_at,
        "message": v.message,
        "overrides": {"forced": True} if v.forced else None,
        "isPrimary": image_set.is_primary,
    }


def update_image_set_metadata(backend: Backend, p: Params) -> Result:
    updates = p["updateImageSetMetadataUpdates"]
    dicom = updates.get("DICOMUpdates") or {}
    request = MetadataUpdate(
        latest_version_id=p["latestVersionId"],
        updatable=dicom.get("updatableAttributes"),
        removable=dicom.get("removableAttributes"),
        revert_to_version_id=updates.get("revertToVersionId"),
        force=bool(p.get("force")),
        include_study_image_sets=bool(p.get("includeStudyImageSets")),
    )
    image_set, version = backend.update_image_set_metadata(
        p["datastoreId"], p["imageSetId"], request
    )
    return {
        "datastoreId": image_set.datastore_id,
        "imageSetId": image_set.image_set_id,
        "latestVersionId": str(version.version_id),
        "imageSetState": version.state,
        "imageSetWorkflowStatus": version.status,
        "createdAt": image_set.created_at,
        "updatedAt": version.updated_at,
    }


def search_image_sets(backend: Backend, p: Params) -> Result:
    criteria = p.get("searchCriteria")
    found, token = search.search_image_sets(
        backend, p["datastoreId"], criteria, p.get("maxResults"), p.get("nextToken")
    )
    summaries = [
        {
            "imageSetId": s.image_set_id,
            "version": s.latest.version_id,
            "createdAt": s.created_at,
            "updatedAt": s.latest.updated_at,
            "lastAccessedAt": s.last_accessed_at,
            "storageTier": "FREQUENT_ACCESS",
            "DICOMTags": search.dicom_tags(s),
            "isPrimary": s.is_primary,
        }
        for s in found
    ]
    sort = (criteria or {}).get("sort")
    return {"imageSetsMetadataSummaries": summaries, "sort": sort, "nextToken": token}


def copy_image_set(backend: Backend, p: Params) -> Result:
    info = p["copyImageSetInformation"]
    source = info["sourceImageSet"]
    destination = info.get("destinationImageSet") or {}
    request = lifecycle.CopyRequest(
        source_version_id=source["latestVersionId"],
        copiable_attributes=(source.get("DICOMCopies") or {}).get("copiableAttributes"),
        destination_image_set_id=destination.get("imageSetId"),
        destination_version_id=destination.get("latestVersionId"),
        force=bool(p.get("force")),
        promote_to_primary=bool(p.get("promoteToPrimary")),
    )
    started = lifecycle.copy_image_set(backend, p["datastoreId"], p["sourceImageSetId"], request)
    return {
        "datastoreId": p["datastoreId"],
        "sourceImageSetProperties": _copy_side(started.source),
        "destinationImageSetProperties": _copy_side(started.destination),
    }


def _copy_side(image_set: ImageSet) -> Result:
    latest = image_set.latest
    return {
        "imageSetId": image_set.image_set_id,
        "latestVersionId": str(latest.version_id),
        "imageSetState": latest.state,
        "imageSetWorkflowStatus": latest.status,
        "createdAt": image_set.created_at,
        "updatedAt": latest.updated_at,
        "imageSetArn": image_set.arn,
    }


def delete_image_set(backend: Backend, p: Params) -> Result:
    image_set = lifecycle.delete_image_set(backend, p["datastoreId"], p["imageSetId"])
    return {
        "datastoreId": image_set.datastore_id,
        "imageSetId": image_set.image_set_id,
        "imageSetState": image_set.latest.state,
        "imageSetWorkflowStatus": image_set.latest.status,
    }


# ---------------------------------------------------------------- tagging


def tag_resource(backend: Backend, p: Params) -> Result:
    backend.tag_resource(p["resourceArn"], p["tags"])
    return {}


def untag_resource(backend: Backend, p: Params) -> Result:
    backend.untag_resource(p["resourceArn"], p["tagKeys"])
    return {}


def list_tags_for_resource(backend: Backend, p: Params) -> Result:
    return {"tags": backend.list_tags_for_resource(p["resourceArn"])}


# ---------------------------------------------------------------- DICOM import jobs


def start_dicom_import_job(backend: Backend, p: Params) -> Result:
    request = imports.ImportRequest(
        job_name=p.get("jobName") or "",
        data_access_role_arn=p["dataAccessRoleArn"],
        client_token=p["clientToken"],
        input_s3_uri=p["inputS3Uri"],
        output_s3_uri=p["outputS3Uri"],
    )
    job = imports.start_import(backend, p["datastoreId"], request)
    return {
        "datastoreId": job.datastore_id,
        "jobId": job.job_id,
        "jobStatus": job.status,
        "submittedAt": job.submitted_at,
    }


def get_dicom_import_job(backend: Backend, p: Params) -> Result:
    job = imports.get_import_job(backend, p["datastoreId"], p["jobId"])
    properties = {
        **_job_summary(job),
        "inputS3Uri": job.input_s3_uri,
        "outputS3Uri": job.output_s3_uri,
    }
    return {"jobProperties": properties}


def list_dicom_import_jobs(backend: Backend, p: Params) -> Result:
    jobs, token = imports.list_import_jobs(
        backend, p["datastoreId"], p.get("jobStatus"), p.get("maxResults"), p.get("nextToken")
    )
    return {"jobSummaries": [_job_summary(j) for j in jobs], "nextToken": token}


def _job_summary(job: ImportJob) -> Result:
    return {
        "jobId": job.job_id,
        "jobName": job.job_name,
        "jobStatus": job.status,
        "datastoreId": job.datastore_id,
        "dataAccessRoleArn": job.data_access_role_arn,
        "endedAt": job.ended_at,
        "submittedAt": job.submitted_at,
        "message": job.message,
    }


HANDLERS: dict[str, Handler] = {
    "CreateDatastore": create_datastore,
    "GetDatastore": get_datastore,
    "ListDatastores": list_datastores,
    "DeleteDatastore": delete_datastore,
    "GetImageSet": get_image_set,
    "GetImageSetMetadata": get_image_set_metadata,
    "ListImageSetVersions": list_image_set_versions,
    "UpdateImageSetMetadata": update_image_set_metadata,
    "SearchImageSets": search_image_sets,
    "CopyImageSet": copy_image_set,
    "DeleteImageSet": delete_image_set,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
    "StartDICOMImportJob": start_dicom_import_job,
    "GetDICOMImportJob": get_dicom_import_job,
    "ListDICOMImportJobs": list_dicom_import_jobs,
}
