"""Thin handlers: read the parsed parameters, call the backend, shape the result as the model's output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.models import Backend, MetadataUpdate
from emulator.resources import Datastore, ImageSet, ImportJob, Version

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
    )
    backend.tag_resource(datastore.arn, p.get("tags") or {})
    return {"datastoreId": datastore.datastore_id, "datastoreStatus": datastore.status}


def get_datastore(backend: Backend, p: Params) -> Result:
    return {"datastoreProperties": _datastore(backend.get_datastore(p["datastoreId"]))}


def list_datastores(backend: Backend, p: Params) -> Result:
    found, token = backend.list_datastores(p.get("datastoreStatus"), p.get("maxResults"), p.get("nextToken"))
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
    image_set, version = backend.get_image_set(p["datastoreId"], p["imageSetId"], p.get("versionId"))
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
    return {"imageSetMetadataBlob": blob, "contentType": "application/json", "contentEncoding": "gzip"}


def list_image_set_versions(backend: Backend, p: Params) -> Result:
    versions, image_set, token = backend.list_image_set_versions(
        p["datastoreId"], p["imageSetId"], p.get("maxResults"), p.get("nextToken")
    )
    return {"imageSetPropertiesList": [_version(image_set, v) for v in versions], "nextToken": token}


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
    image_set, version = backend.update_image_set_metadata(p["datastoreId"], p["imageSetId"], request)
    return {
        "datastoreId": image_set.datastore_id,
        "imageSetId": image_set.image_set_id,
        "latestVersionId": str(version.version_id),
        "imageSetState": version.state,
        "imageSetWorkflowStatus": version.status,
        "createdAt": image_set.created_at,
        "updatedAt": version.updated_at,
    }


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
}
